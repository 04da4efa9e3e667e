"""Named errors. The CLI turns them into one-line messages and exit codes in one place.

One rule splits them: what the user can fix (the input, the request, the machine's disk) is a
UserError and exits 2; what we failed at is an InternalError and exits 1. Every error raised is
one of the two; ToolkitError is only their common base, never raised itself."""

from __future__ import annotations


class ToolkitError(Exception):
    """The base of toolkit's named errors (catch this; raise a UserError or an InternalError)."""

    exit_code = 1


class UserError(ToolkitError):
    """Bad input or a request we cannot satisfy as asked (exit 2)."""

    exit_code = 2


class InternalError(ToolkitError):
    """Something that should have worked did not: a tool, a build, a download, our own code (exit 1)."""

    exit_code = 1


class NotProvisioned(UserError):
    """llama.cpp's converter has not been taken from the pinned sdist yet."""


class UnknownQuantType(UserError):
    """A quantization type llama.cpp does not know."""


class ImatrixRequired(UserError):
    """The type needs an importance matrix, which this command was not given."""


class NotACheckpoint(UserError):
    """A local path that is not a Hugging Face checkpoint directory."""


class UnsupportedArchitecture(UserError):
    """llama.cpp's converter has no support for the checkpoint's architecture."""


class UnsupportedTokenizer(UserError):
    """llama.cpp's converter does not know the checkpoint's BPE pre-tokenization."""


class RepoNotFound(UserError):
    """The hub has no such repository, or it is private and no valid token was given."""


class GatedRepo(UserError):
    """The repository is gated and the token (if any) has no access."""


class RevisionNotFound(UserError):
    """The repository exists but not at the requested revision."""


class HubUnavailable(UserError):
    """The hub cannot be reached and nothing usable is cached."""


class OutputExists(UserError):
    """An output is present and was not made from this source; --force replaces it."""


class InvalidGGUF(UserError):
    """A file that is not a complete GGUF model."""


class ModelNotFound(UserError):
    """No model file could be located."""


class InvalidInput(UserError):
    """A competition file that is not what the task's format says."""


class NoChatTemplate(UserError):
    """The model file carries no chat template and none was given."""


class InvalidAdapter(UserError):
    """Not a PEFT adapter directory (no adapter_config.json, no weights, malformed tensors)."""


class UnsupportedAdapter(InvalidAdapter):
    """A PEFT adapter of a kind toolkit cannot merge or convert (not LoRA, DoRA, full weights …)."""


class AdapterMismatch(InvalidAdapter):
    """An adapter made for another base model: missing tensors or other shapes."""


class ConversionFailed(InternalError):
    """llama.cpp's converter exited with an error."""


class QuantizationFailed(InternalError):
    """llama.cpp's quantizer returned an error."""


class LoadFailed(InternalError):
    """llama.cpp could not load a model file or create a context."""


class OutOfMemory(UserError):
    """llama.cpp could not allocate the weights, KV cache or compute buffers asked for: the
    request does not fit the device (exit 2: fewer layers, a smaller context or quant fits)."""


class DecodeFailed(InternalError):
    """llama.cpp failed while evaluating tokens."""


class ToolsNotBuilt(UserError):
    """llama.cpp's command-line tools (llama-imatrix, llama-quantize) have not been built yet."""


class OutputNotWritable(UserError):
    """The output file or its directory cannot be written."""


class DiskFull(OutputNotWritable):
    """The disk cannot hold what a step writes: refused before the step when its size is known,
    or named when the disk filled while writing (nothing half-written is kept either way)."""


class OutputBusy(OutputNotWritable):
    """Another toolkit process is writing the same output: a second writer would remove the
    first one's temporary files and lose its manifest or answers, so it stops at once."""
