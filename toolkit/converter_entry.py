"""How toolkit starts llama.cpp's converter scripts: run unchanged, with one adaptation to the
transformers toolkit installs.

    python -m toolkit.converter_entry SCRIPT ARGS...      # as `python SCRIPT ARGS...`

The converter reads a checkpoint's config.json through transformers' AutoConfig where
transformers knows the model type, else as the raw file. EXAONE 3.0/3.5 (`ExaoneForCausalLM`)
is a remote-code model to transformers 4.57.6, which llama.cpp pins, so its converter reads the
raw keys and finds no RMS-norm epsilon; transformers 5 knows the type and renames the keys as
its ExaoneConfig.attribute_map says, so the converter stops with KeyError: 'activation_function'.
Either way no EXAONE 3.x checkpoint converts. The adaptation gives the converter both names of
each key that attribute_map pairs, whichever way it read the file; nothing else changes.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

# transformers' ExaoneConfig.attribute_map: the checkpoint's name → transformers' name.
EXAONE_KEYS = {"activation_function": "hidden_act", "layer_norm_epsilon": "rms_norm_eps",
               "num_layers": "num_hidden_layers"}


def complete_hparams(hparams: dict) -> dict:
    """`hparams` as the converter loaded them, with EXAONE 3.x's keys under both names."""
    if "ExaoneForCausalLM" in (hparams.get("architectures") or []):
        for raw, renamed in EXAONE_KEYS.items():
            if raw in hparams and renamed not in hparams:
                hparams[renamed] = hparams[raw]
            elif renamed in hparams and raw not in hparams:
                hparams[raw] = hparams[renamed]
    return hparams


def main() -> None:
    script = Path(sys.argv[1])
    sys.argv = sys.argv[1:]
    # As `python SCRIPT` sets it: the script's folder (its `conversion` package) first, where
    # `-m` put the working directory, whose folders must not shadow the converter's imports.
    if getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, str(script.parent))
    else:
        sys.path[0] = str(script.parent)
    from conversion.base import ModelBase

    load = ModelBase.load_hparams
    ModelBase.load_hparams = staticmethod(lambda *args, **kwargs: complete_hparams(load(*args, **kwargs)))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
