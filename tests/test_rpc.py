"""Beyond one machine: llama.cpp's RPC servers on loopback, joined with --rpc (rpc.py, engine, infer)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit import embedded, fit, rpc, samples, tools
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import UserError

from conftest import REPO, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoints_are_parsed_in_order_and_bad_ones_named():
    assert rpc.parse("127.0.0.1:50052, 10.0.0.2:50053,[::1]:7") == [
        rpc.Endpoint("127.0.0.1", 50052), rpc.Endpoint("10.0.0.2", 50053), rpc.Endpoint("::1", 7)]
    assert str(rpc.Endpoint("::1", 7)) == "[::1]:7"
    for spec, said in (("127.0.0.1", "127.0.0.1 is not HOST:PORT"), ("h:0", "h:0 is not HOST:PORT"),
                       ("h:x", "h:x is not HOST:PORT"), ("a:1,", "(empty) is not HOST:PORT"),
                       ("a:1,a:1", "a:1 is named twice")):
        with pytest.raises(UserError, match=f"^--rpc: {re.escape(said)}"):
            rpc.parse(spec)


def test_loopback_is_told_from_the_rest():
    assert all(rpc.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(rpc.is_loopback(h) for h in ("0.0.0.0", "10.0.0.2", "example.org", "::"))


def test_an_unreachable_server_is_one_line_and_exit_2_before_loading(tmp_path):
    port = free_port()  # nothing listens there
    out = tmp_path / "answers.json"
    r = run_cli("infer", str(samples.samples_path()), "--model", str(embedded.smollm2_gguf()), "--output", str(out),
                "--rpc", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: the RPC server 127.0.0.1:{port} is unreachable (connection refused); start it "
                                f"there with `toolkit rpc-server --port {port}` (or drop it from --rpc)")
    assert not out.exists() and not list(tmp_path.iterdir())
    for command in (["doctor"], ["bench", str(embedded.smollm2_gguf())],
                    ["compare", str(embedded.smollm2_gguf()), str(embedded.smollm2_gguf())]):
        r = run_cli(*command, "--rpc", f"127.0.0.1:{port}")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
            f"error: the RPC server 127.0.0.1:{port} is unreachable"), (command, r.stderr)


def test_server_settings_llama_cpp_would_refuse_are_one_line():
    for settings, said in ((rpc.ServerSettings(host="localhost"), "--host: 'localhost' is not an IPv4 address"),
                           (rpc.ServerSettings(devices=("CUDA7",)), "--device: no device 'CUDA7' here; there are CPU")):
        with pytest.raises(UserError, match=f"^{re.escape(said)}"):
            rpc.check_server_settings(settings)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"^cannot listen on 127.0.0.1:{port}: address already in use"):
            rpc.check_server_settings(rpc.ServerSettings(port=port))
    assert rpc.server_command("bin", rpc.ServerSettings(port=7, devices=("CPU",), cache=True, threads=2)) == [
        "bin", "--host", "127.0.0.1", "--port", "7", "--device", "CPU", "--threads", "2", "--cache"]



# -- two servers on loopback: `toolkit rpc-server` as a user starts it ---------------------------

FIXTURES = Path(__file__).parent / "fixtures"


class Server:
    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "toolkit", "rpc-server", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.1)
        raise AssertionError(f"rpc-server on {self.port} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def servers():
    tools.require_tool(rpc.SERVER)  # setup builds it (toolkit setup --tools)
    pair = [Server(free_port()).start(), Server(free_port()).start()]
    yield pair
    for s in pair:
        s.kill()


def _answers(path: Path) -> list[str]:
    return [item["output"]["answer"] for item in json.loads(path.read_text(encoding="utf-8"))]


def test_layers_over_two_servers_and_the_cpu_answer_as_the_local_run(servers, tmp_path):
    """Greedy, --batch-invariant: the same kernels on each side of the wire (no weight repacking;
    flash attention off on both, where auto would differ: off on the CPU, llama.cpp's choice on an
    offload device), so a run whose layers sit on two RPC servers and this CPU gives the local
    run's answers."""
    questions = FIXTURES / "questions24.json"
    common = ["--model", str(embedded.smollm2_gguf()), "--greedy", "--max-new-tokens", "24", "--batch-invariant",
              "--flash-attn", "off", "--parallel", "4", "--json"]
    local = run_cli("infer", str(questions), *common, "--output", str(tmp_path / "local.json"))
    assert local.returncode == 0, local.stderr
    spread = run_cli("infer", str(questions), *common, "--output", str(tmp_path / "rpc.json"),
                     "--rpc", ",".join(s.endpoint for s in servers), "--n-gpu-layers", "20")
    assert spread.returncode == 0, spread.stderr
    memory = json.loads(spread.stdout)["memory_mib"]
    for s in servers:  # llama.cpp's own buffers: weights, KV cache and compute on each server
        assert {"model", "KV", "compute"} <= set(memory[f"RPC0[{s.endpoint}]"]), memory
    assert memory["CPU"]["KV"] > 0 and memory["CPU_Mapped"]["model"] > 0  # and the first layers here
    assert json.loads(spread.stdout)["layers_on_gpu"] == "20/31"
    assert _answers(tmp_path / "rpc.json") == _answers(tmp_path / "local.json")


@pytest.fixture
def own_servers():
    """Servers of the test's own: this one kills one (the module's stay up for the tests in this
    process, which keeps its connections to them)."""
    tools.require_tool(rpc.SERVER)
    pair = [Server(free_port()).start(), Server(free_port()).start()]
    yield pair
    for s in pair:
        s.kill()


def test_a_server_lost_mid_run_stops_with_one_line_and_a_rerun_resumes(own_servers, tmp_path):
    servers = own_servers
    out = tmp_path / "answers.json"

    def infer_args(output: Path) -> list[str]:
        return ["infer", str(samples.samples_path()), "--model", str(embedded.smollm2_gguf()), "--output", str(output),
                "--greedy", "--max-new-tokens", "24", "--parallel", "1", "--rpc",
                ",".join(s.endpoint for s in servers), "--n-gpu-layers", "20"]

    args = infer_args(out)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if sum("output" in i for i in json.loads(out.read_text(encoding="utf-8"))) >= 2:
                    break
            time.sleep(0.05)
        servers[1].kill()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (f"error: the RPC server {servers[1].endpoint} stopped answering mid-run (llama.cpp: Remote RPC "
                    f"server crashed or returned malformed response); the answers finished so far are kept in {out}: "
                    "restart the server and run the same command to resume"), stderr
    assert "ggml_abort" not in stderr and "backtrace" not in stderr.lower()
    kept = sum("output" in i for i in json.loads(out.read_text(encoding="utf-8")))
    assert 2 <= kept < 8
    # The rerun before the server is back: refused before loading, the answers untouched.
    before = out.read_bytes()
    r = run_cli(*args)
    assert r.returncode == 2 and "is unreachable" in r.stderr and out.read_bytes() == before
    servers[1].start()
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed"] == kept and summary["generated"] == 8 - kept
    whole = run_cli(*infer_args(tmp_path / "whole.json"), "--json")
    assert whole.returncode == 0, whole.stderr
    assert _answers(out) == _answers(tmp_path / "whole.json")  # greedy: the interrupted run's answers are the same


# -- the plan against llama.cpp's own allocations -----------------------------------------------

MIB = 2**20


def _load(model: Path, endpoints: str, cap: int | None):
    """Load with auto over the servers' devices and a context as infer opens one (a row of
    logits); the plan and llama.cpp's logged buffers, MiB by buffer type."""
    settings = EngineSettings(n_gpu_layers="auto", rpc=endpoints, vram_limit=cap, flash_attn=True)
    with Engine(model, settings) as engine:
        engine.open_context(2048, logits_rows=1)
        return engine.fit_plan, engine.memory(), engine.info


def _caps(model: Path, endpoints: str) -> list[int | None]:
    """No cap; then room for each device's compute buffer and half (a quarter) of the weights
    and KV cache it would hold with no cap."""
    plan, _, _ = _load(model, endpoints, None)
    compute = max(d.compute_bytes for d in plan.devices)
    held = max(d.weights_bytes + d.kv_bytes for d in plan.devices)
    return [None] + [fit.MIN_MARGIN + compute + int(held * share) for share in (0.5, 0.25)]


@pytest.mark.parametrize("n_servers", [1, 2])
def test_the_plan_per_device_is_what_llama_cpp_allocates(servers, n_servers, gemma3_gguf, moe_gguf):
    """Weights to 0.1 MiB and the KV cache exactly, per device; the compute buffer never below
    llama.cpp's, at most 30 % + 16 MiB above; the layers offloaded those planned; every device
    within its cap."""
    endpoints = ",".join(s.endpoint for s in servers[:n_servers])
    for model in (embedded.smollm2_gguf(), gemma3_gguf, moe_gguf):
        for cap in _caps(model, endpoints):
            plan, memory, info = _load(model, endpoints, cap)
            assert len(plan.devices) == n_servers
            assert info.layers_offloaded == min(plan.n_gpu_layers, plan.n_layer + 1), (model.name, cap)
            for d in plan.devices:
                got = memory.get(d.name, {})
                assert got.get("model", 0) == pytest.approx(d.weights_bytes / MIB, abs=0.1), (model.name, cap, d)
                assert got.get("KV", 0) == pytest.approx(d.kv_bytes / MIB, abs=0.01), (model.name, cap, d)
                measured = got.get("compute", 0) * MIB
                assert measured <= d.compute_bytes <= 1.3 * measured + 16 * MIB or d.units == 0, (model.name, cap, d)
                assert d.used_bytes <= d.free_bytes - d.margin_bytes or d.units == 0
            if cap is not None:
                assert not plan.all_layers or plan.cpu_experts  # a cap that bites
            else:
                assert plan.all_layers and not plan.cpu_experts


def test_a_capped_moe_keeps_experts_off_the_device_and_llama_cpp_confirms_it(servers, moe_gguf, tmp_path):
    """Room for every layer but not every expert: the experts of the first layers stay in RAM
    (llama.cpp's buffers: the device holds exactly the rest), and infer answers."""
    from toolkit import gguf

    endpoints = servers[0].endpoint
    roomy, _, _ = _load(moe_gguf, endpoints, None)
    shape = fit.shape_of(moe_gguf)
    (device,) = roomy.devices
    cap = fit.MIN_MARGIN + device.used_bytes - 2 * shape.expert_bytes[0] + 1  # two layers' experts too many
    plan, memory, info = _load(moe_gguf, endpoints, cap)
    assert plan.all_layers and info.layers_offloaded == shape.n_layer + 1
    assert plan.cpu_experts == (0, 1)
    on_device = memory[plan.devices[0].name]["model"] * MIB
    assert on_device == pytest.approx(device.weights_bytes - shape.expert_bytes[0] - shape.expert_bytes[1], abs=0.1 * MIB)
    header = gguf.read(moe_gguf)
    experts_in_ram = sum(t.nbytes for t in header.tensors if re.match(r"blk\.[01]\.ffn_.*_exps", t.name))
    in_ram = sum(v.get("model", 0) for k, v in memory.items() if not k.startswith("RPC")) * MIB
    embedding = next(t.nbytes for t in header.tensors if t.name == "token_embd.weight")
    # In RAM: the embedding and those experts (mapped from the file; the mapped range also spans the
    # file's bytes between them, and the CPU's repacked copies of some come on top).
    assert embedding + experts_in_ram - 0.1 * MIB <= in_ram <= embedding + 2 * experts_in_ram
    r = run_cli("infer", str(samples.samples_path()), "--model", str(moe_gguf), "--output", str(tmp_path / "a.json"),
                "--rpc", endpoints, "--n-gpu-layers", "auto", "--vram-limit", f"{cap / 2**30:.9f}", "--greedy",
                "--max-new-tokens", "4", "--parallel", "1", "--n-ctx", "2048", "--json")
    assert r.returncode == 0, r.stderr
    assert "experts of 2/4 layers in RAM" in r.stderr and json.loads(r.stdout)["generated"] == 8


def test_your_own_split_and_overrides_reach_llama_cpp(servers, moe_gguf):
    """--tensor-split 1,4 over two servers: one unit (layer 0) on the first, the other four (layers
    1–3 and the output) on the second; --override-tensor keeps every expert off both."""
    from toolkit import gguf

    tensors = gguf.read(moe_gguf).tensors
    layer = [sum(t.nbytes for t in tensors if t.name.startswith(f"blk.{i}.")) for i in range(4)]
    experts = [sum(t.nbytes for t in tensors if re.match(rf"blk\.{i}\.ffn_.*_exps", t.name)) for i in range(4)]
    output = sum(t.nbytes for t in tensors if t.name.startswith("output"))
    first, second = (f"RPC0[{s.endpoint}]" for s in servers)
    endpoints = ",".join(s.endpoint for s in servers)
    for overrides, minus in (((), [0] * 4), ((("ffn_.*_exps", "CPU"),), experts)):
        settings = EngineSettings(n_gpu_layers=-1, rpc=endpoints, tensor_split=(1.0, 4.0), overrides=overrides)
        with Engine(moe_gguf, settings) as engine:
            memory = engine.memory()
        assert memory[first]["model"] * MIB == pytest.approx(layer[0] - minus[0], abs=0.05 * MIB)
        assert memory[second]["model"] * MIB == pytest.approx(sum(layer[1:]) - sum(minus[1:]) + output, abs=0.05 * MIB)


def test_placement_options_llama_cpp_would_refuse_are_one_line(servers, tmp_path):
    base = ["infer", str(samples.samples_path()), "--model", str(embedded.smollm2_gguf()),
            "--output", str(tmp_path / "a.json"), "--rpc", servers[0].endpoint]
    for extra, line in (
            (["--tensor-split", "1,1"], f"error: --tensor-split: 2 shares for 1 device(s) (in order: "
                                        f"RPC0[{servers[0].endpoint}])"),
            (["--split-mode", "row"], "error: --split-mode row splits matrices across the GPUs of one machine; "
                                      "llama.cpp cannot split them over RPC devices: use --split-mode layer"),
            (["--override-tensor", "exps=CUDA9"], "error: --override-tensor: no device 'CUDA9' here; there are CPU, "
                                                  f"RPC0 (RPC0[{servers[0].endpoint}])"),
            (["--override-tensor", "exps"], "error: --override-tensor: 'exps' is not REGEX=DEVICE (e.g. "
                                            "'ffn_.*_exps=CPU')"),
            (["--tensor-split", "1,x"], "error: --tensor-split: '1,x' is not a list of numbers like 3,1"),
            (["--tensor-split", "0,0"], "error: --tensor-split: needs shares of 0 or more, at least one above 0 "
                                        "(e.g. 3,1)"),
            (["--rpc", "nohost"], "error: --rpc: nohost is not HOST:PORT (e.g. 127.0.0.1:50052)")):
        r = run_cli(*base, *extra)
        assert r.returncode == 2 and r.stderr.strip() == line, (extra, r.stderr)
        assert not (tmp_path / "a.json").exists()


def test_a_server_gone_after_a_run_does_not_take_this_process_down(own_servers):
    """llama.cpp keeps a server's devices registered for the process's life and aborts when one it
    asks no longer answers: asking for the devices, running locally and naming the server again
    must all go on (the last with one error)."""
    from toolkit import backend

    gone = own_servers[0]
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers=5, rpc=gone.endpoint)) as engine:
        engine.open_context(256)
        assert engine.info.layers_offloaded == 5
    gone.kill()
    (device,) = [d for d in backend.devices() if d.description == gone.endpoint]
    assert device.free_bytes == device.total_bytes == 0
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers=-1)) as engine:
        engine.open_context(256)
        assert engine.info.layers_offloaded == 0 and engine.devices == []
    with pytest.raises(UserError, match=f"^the RPC server {re.escape(gone.endpoint)} is unreachable"):
        Engine(embedded.smollm2_gguf(), EngineSettings(rpc=gone.endpoint))


def test_a_server_beyond_loopback_warns_that_rpc_has_no_authentication():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "rpc-server", "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stderr.readline().strip()
        second = proc.stderr.readline().strip()
    finally:
        proc.kill()
        proc.wait()
    assert first == (f"warning: the RPC server listens on 0.0.0.0: RPC has no authentication, so anyone who can reach "
                     f"port {port} can use this machine's devices and memory; use it only on a network you trust (or "
                     "keep 127.0.0.1 and tunnel)")
    assert second.startswith(f"note: rpc-server: llama.cpp's ggml-rpc-server on 0.0.0.0:{port}")
