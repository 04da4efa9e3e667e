"""Errors reach the user as one line and an exit code; -v adds the traceback."""

import json
import re

import pytest

from conftest import run_cli


def test_unknown_quant_type_lists_valid_types():
    r = run_cli("quantize", ".", "--type", "q4_k_xl")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown quantization type 'q4_k_xl'" in r.stderr and "Q4_K_M" in r.stderr and "IQ4_XS" in r.stderr


def test_directory_without_config(tmp_path):
    r = run_cli("quantize", str(tmp_path))
    assert r.returncode == 2 and "no config.json" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("-v", "quantize", str(tmp_path))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_any_type_as_a_flag_or_type_list(tiny_hf, tmp_path):
    from toolkit import gguf
    from toolkit.quantizer import QUANT_TYPES

    r = run_cli("quantize", str(tiny_hf), "--Q6_K", "--type", "q5_k_m,IQ4_xs", "--no-check",
                "--output-dir", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(f["type"], f["status"]) for f in report["files"]] == [("Q6_K", "built"), ("Q5_K_M", "built"),
                                                                 ("IQ4_XS", "built")]
    assert report["source"]["kind"] == "local" and report["convert_seconds"] > 0 and report["fidelity"] == []
    names = sorted(p.name for p in (tmp_path / "tiny-llama").glob("*.gguf"))
    assert names == ["tiny-llama-IQ4_XS.gguf", "tiny-llama-Q5_K_M.gguf", "tiny-llama-Q6_K.gguf"]
    # IQ4_XS needs no importance matrix.
    iq4 = gguf.read(tmp_path / "tiny-llama" / "tiny-llama-IQ4_XS.gguf")
    assert iq4.file_type == QUANT_TYPES["IQ4_XS"] and "IQ4_XS" in iq4.tensor_type_counts()


def test_imatrix_type_is_a_user_error(smollm2_hf, tmp_path):
    r = run_cli("quantize", str(smollm2_hf), "--iq2_xxs", "--output-dir", str(tmp_path))
    assert r.returncode == 2 and "importance matrix" in r.stderr and "--imatrix auto" in r.stderr
    assert [ln for ln in r.stderr.splitlines() if "error" in ln][0].startswith("error: IQ2_XXS needs")
    assert not (tmp_path / "SmolLM2-135M-Instruct").exists()  # refused before converting anything


COMMANDS = ["setup", "doctor", "inspect", "rpc-server", "quantize", "compare", "lora", "infer", "retrieve", "bench", "score", "vote",
            "demo"]


def test_help_lists_every_command_and_each_shows_its_options_in_panels(capsys):
    from toolkit import cli

    assert cli.main(["--help"]) == 0
    panel = capsys.readouterr().out.split("─ Commands ─")[1]
    listed = re.findall(r"^│ (\S+)  ", panel, flags=re.M)  # a wrapped help line starts with spaces
    assert listed == COMMANDS  # each once, in this order: a command missing or added fails here
    panels = {"infer": ["Model", "Prompts, references and examples", "Sampling (HF generate semantics)",
                        "GPU and throughput", "Output"],
              "bench": ["Prompts, references and examples", "GPU and throughput", "Output"],
              "quantize": ["Model", "Output"], "retrieve": ["Prompts, references and examples", "Output"],
              "doctor": ["GPU and throughput", "Output"], "score": ["Model", "Output"], "vote": ["Output"]}
    for command in COMMANDS:
        assert cli.main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"Usage: toolkit {command}" in out and "Examples:" in out and "$ toolkit " in out
        for panel in panels.get(command, []):
            assert f"─ {panel} ─" in out, (command, panel)


def test_version(capsys):
    from toolkit import __version__, cli

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"toolkit {__version__}\n"


def test_demo_quantizes_the_embedded_model(tmp_path):
    # A demo's answers from before infer kept a record of their settings: the demo's own file, replaced.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "samples.answers.json").write_text('[{"id": "s1", "output": {"answer": "old"}}]')
    r = run_cli("demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "models" / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    assert out.is_file()
    assert "Q4_K_M" in r.stdout and "architecture     llama" in r.stdout
    assert "fidelity vs the BF16 intermediate" in r.stdout and "top-1" in r.stdout
    answers = json.loads((tmp_path / "models" / "samples.answers.json").read_text(encoding="utf-8"))
    assert len(answers) == 8 and all(isinstance(a["output"]["answer"], str) for a in answers)
    assert "overall" in r.stdout and "final = (EM + mean of rouge1" in r.stdout


def test_verbose_after_the_command_too(tmp_path):
    r = run_cli("quantize", str(tmp_path), "-v")
    assert r.returncode == 2 and "Traceback" in r.stderr and "no config.json" in r.stderr


@pytest.mark.parametrize("args,match", [
    (["infer", "x.json", "--parallel", "0"], "--parallel: must be at least 1"),
    (["infer", "x.json", "--threads", "-3"], "--threads: must be at least 0"),
    (["infer", "x.json", "--lora-scale", "nan"], "--lora-scale: must be a finite number"),
    (["infer", "x.json", "--vram-limit", "inf"], "--vram-limit: must be a number of GiB above 0"),
    (["doctor", "--vram", "1e308"], "--vram: must be a number of GiB above 0"),
    (["doctor", "--n-ctx", "-10"], "--n-ctx: must be at least 1"),
    (["bench", "m.gguf", "--repeat", "0"], "--repeat: must be at least 1"),
    (["compare", "a.gguf", "b.gguf", "--n-ctx", "2"], "--n-ctx: must be at least 16"),
    (["infer", "x.json", "--n-gpu-layers", "most"], "--n-gpu-layers: 'most' is neither a number of layers nor 'auto'"),
    (["infer", "x.json", "--answer-form", "maybe"], "--answer-form: 'maybe' is not one of 'free', 'strict', 'choose'."),
    (["retrieve", "q.json"], "Missing option '--references'."),
])
def test_out_of_range_numbers_are_refused_by_name(args, match, capsys):
    from toolkit import cli

    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == f"error: {match}\n"  # one line, nothing else


def test_a_full_disk_anywhere_is_one_line_and_exit_2(monkeypatch, capsys):
    """Writes that have no check of their own (a manifest, a settings record) still end as the
    machine's problem, not as an internal failure with exit 1."""
    import errno

    from toolkit import cli, inspection

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", "models/x/manifest.json")

    monkeypatch.setattr(inspection, "summary", full)
    assert cli.main(["inspect", "x.gguf"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no space left on the device writing models/x/manifest.json; free "
                                               "some space and rerun (finished work is kept, nothing half-written is left)")
    monkeypatch.setattr(inspection, "summary", lambda path: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert cli.main(["inspect", "x.gguf"]) == 1


def test_the_votes_line_says_how_often_the_kept_sentence_was_chosen():
    from toolkit.printing import describe_agreement

    assert describe_agreement({3: 5, 2: 2, 0: 1}, 3) == (
        "the kept sentence had 3/3 votes on 5 questions, 2/3 on 2, 0/3 on 1 (0: no answer had the form)")
    assert describe_agreement({2: 1}, 5) == "the kept sentence had 2/5 votes on 1 question"


def _bracketed(tmp_path):
    """Paths and ids that rich would read as markup: `[/b]` closes a tag never opened."""
    d = tmp_path / "m[draft]"
    d.mkdir()
    (d / "no-config[/b]").mkdir(parents=True)  # a directory `no-config[` holding `b]`
    bad = d / "q[/red].json"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(json.dumps([{"id": "[/red]", "input": {"question_type": "선택형"}}]), encoding="utf-8")
    good = d / "good.json"
    good.write_text(json.dumps([{"id": "[/red]", "input": {"question_type": "선택형", "question": "\"{가/나}\" 중에 "
                                                                                      "옳은 것을 고르시오."}}]),
                    encoding="utf-8")
    return d, bad, good


def test_bracketed_paths_and_ids_are_printed_as_written_by_every_command(tmp_path, capsys):
    """No command turns a path or an id into markup: no MarkupError, no eaten brackets."""
    from toolkit import cli

    d, bad, good = _bracketed(tmp_path)
    cases = [
        (["setup", "--sdist", str(d / "none[/b].tar.gz"), "--force"], "none[/b].tar.gz"),
        (["doctor", "--model", str(d / "x.gguf")], "m[draft]"),
        (["quantize", str(d / "no-config[/b]")], "no-config[/b]"),
        (["compare", str(d / "r[/red].gguf"), str(d / "q.gguf")], "r[/red].gguf"),
        (["lora", str(d / "a[/b]"), "--base", str(d / "b[x]")], "m[draft]/b[x]"),
        (["inspect", str(d / "i[/b].gguf")], "i[/b].gguf"),
        (["infer", str(good), "--model", str(d / "x.gguf")], "m[draft]/x.gguf"),
        (["infer", str(bad), "--dry-run"], "[/red]"),
        (["retrieve", str(good), "--references", str(d / "[labels].txt")], "[labels].txt"),
        (["bench", str(d / "[/b].gguf")], "[/b].gguf"),
        (["score", str(d / "p[/b].json"), str(bad)], "p[/b].json"),
        (["vote", str(d / "a[/b].json"), str(good), "--output", str(d / "o.json")], "a[/b].json"),
    ]
    for args, shown in cases:
        code = cli.main(args)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert shown in err and "MarkupError" not in err, (args, err)


def test_warnings_notices_tables_and_bars_print_text_as_written(capsys):
    from types import SimpleNamespace

    from toolkit import console, printing

    console.warn("[labels].json [/b] has 3 titles")
    console.notice("id [/red] done")
    console.error("m[draft]/x.gguf: no such model file")
    found = [SimpleNamespace(id="[/red]", titles=["[b]제1항"], scores=[1.5])]
    printing.print_found(SimpleNamespace(found=found, seconds=0.1))
    with console.step_progress() as bar:
        bar.add_task("answering q[/b].json", total=1)
    out, err = capsys.readouterr()
    assert "warning: [labels].json [/b] has 3 titles" in err and "note: id [/red] done" in err
    assert "error: m[draft]/x.gguf: no such model file" in err and "answering q[/b].json" in err
    assert out.split() == ["[/red]", "[b]제1항", "(1.50)"] and out.count("\n") == 1


def test_shell_completion_names_commands_and_options():
    def complete(words: str) -> list[str]:
        env = {"_TOOLKIT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        r = run_cli(env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("toolkit inf") == ["infer"]
    assert complete("toolkit infer --answer-f") == ["--answer-form"]
