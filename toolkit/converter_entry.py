"""How toolkit starts llama.cpp's converter scripts: run unchanged, after three adaptations.

    python toolkit/converter_entry.py SCRIPT ARGS...      # as `python SCRIPT ARGS...`

llama.cpp pins transformers 4.57.6 for its converter; toolkit installs transformers 5, which
reads two things differently, and the converter trusts some tokenizers' own code:

1. EXAONE 3.0/3.5 (`ExaoneForCausalLM`) is a remote-code model to transformers 4.57.6, so the
   converter reads its raw config.json and finds no RMS-norm epsilon (the file it writes does not
   load); transformers 5 knows the type and renames its keys as ExaoneConfig.attribute_map says,
   and the converter stops with KeyError: 'activation_function'. The converter gets both names of
   each key that attribute_map pairs (so the GGUF may carry a layer_norm_epsilon that llama.cpp's
   EXAONE loader does not read, beside the RMS one it does).
2. A tokenizer whose tokenizer_config.json names GPT2Tokenizer: transformers 5 builds GPT-2's own
   pre-tokenizer for it and drops the one in tokenizer.json, transformers 4 loaded that file as it
   is. The converter recognises a tokenizer by the hash of its tokens for a fixed text, recorded
   under transformers 4, so such a tokenizer (EXAONE's, with its own digit splitting) is loaded
   from tokenizer.json as it is.
3. The converter asks transformers to run a checkpoint's own tokenizer code for some models;
   toolkit never runs code from a checkpoint, so that request is turned off.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

# transformers' ExaoneConfig.attribute_map: the checkpoint's name → transformers' name.
EXAONE_KEYS = {"activation_function": "hidden_act", "layer_norm_epsilon": "rms_norm_eps",
               "num_layers": "num_hidden_layers"}
# Tokenizer classes whose transformers 5 constructor builds GPT-2's pipeline itself.
GPT2_CLASSES = {"GPT2Tokenizer", "GPT2TokenizerFast"}


def complete_hparams(hparams: dict) -> dict:
    """`hparams` as the converter loaded them, with EXAONE 3.x's keys under both names."""
    if "ExaoneForCausalLM" in (hparams.get("architectures") or []):
        for raw, renamed in EXAONE_KEYS.items():
            if raw in hparams and renamed not in hparams:
                hparams[renamed] = hparams[raw]
            elif renamed in hparams and raw not in hparams:
                hparams[raw] = hparams[renamed]
    return hparams


def _tokenizer_class(directory: Path) -> str | None:
    try:
        return json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None


def adapt() -> None:
    """Install the adaptations (the converter's own modules must be importable)."""
    import transformers
    from conversion.base import ModelBase

    load_hparams = ModelBase.load_hparams
    ModelBase.load_hparams = staticmethod(lambda *args, **kwargs: complete_hparams(load_hparams(*args, **kwargs)))

    load_tokenizer = transformers.AutoTokenizer.from_pretrained

    def from_pretrained(path, *args, **kwargs):
        kwargs["trust_remote_code"] = False
        directory = Path(str(path))
        if (directory / "tokenizer.json").is_file() and _tokenizer_class(directory) in GPT2_CLASSES:
            return transformers.PreTrainedTokenizerFast.from_pretrained(path, *args, **kwargs)
        return load_tokenizer(path, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = staticmethod(from_pretrained)


def main() -> None:
    script = Path(sys.argv[1])
    sys.argv = sys.argv[1:]
    # As `python SCRIPT` sets it: the script's folder (its `conversion` package) first, in place
    # of this file's folder, whose modules must not shadow the converter's imports.
    if getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, str(script.parent))
    else:
        sys.path[0] = str(script.parent)
    adapt()
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
