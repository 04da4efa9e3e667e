"""llama.cpp's log is read, not printed: whole lines, hooks, and the reason of a failure."""

from toolkit import embedded, llama_log


def test_pieces_become_lines_and_the_last_error_is_found():
    seen = []
    tail = llama_log.LogTail(seen.append, keep=3)
    for piece in ("llama_model_loader: loaded meta", "data\nload_tensors: CPU ", "buffer\n", "error: no such tensor\n",
                  "main: done\n", "partial"):
        tail.feed(piece)
    assert seen == ["llama_model_loader: loaded metadata", "load_tensors: CPU buffer", "error: no such tensor",
                    "main: done"]
    assert list(tail.lines) == seen[1:]  # only the last `keep` lines are kept; "partial" waits for its newline
    assert tail.last_error() == "error: no such tensor"
    assert llama_log.LogTail().last_error() is None


def test_capture_takes_a_real_load_off_the_terminal(capfd):
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    kept = len(llama_log._callbacks)
    with llama_log.capture() as log:
        model = llama_cpp.llama_model_load_from_file(str(embedded.smollm2_gguf()).encode(), params)
        missing = llama_cpp.llama_model_load_from_file(b"/nonexistent/x.gguf", params)
    llama_cpp.llama_model_free(model)
    assert model and not missing
    assert "llama_model_loader" in log.text() and "general.architecture" in log.text()
    assert "No such file or directory" in log.text() and "failed to load model" in log.last_error()
    out, err = capfd.readouterr()
    assert "llama_model_loader" not in out + err
    assert len(llama_log._callbacks) == kept + 1  # kept alive after the block: a llama.cpp thread may still log


# llama.cpp's own lines (ggml-cuda.cu, ggml-alloc.c, llama-model.cpp, llama.cpp) when a GPU is full.
CUDA_WEIGHTS = """load_tensors: offloading 32 repeating layers to GPU
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4403.49 MiB on device 0: cudaMalloc failed: out of memory
alloc_tensor_range: failed to allocate CUDA0 buffer of size 4617388032
llama_model_load: error loading model: unable to allocate CUDA0 buffer
llama_model_load_from_file_impl: failed to load model
"""
# …and the lines a real CPU run gave for a 3M-token KV cache of SmolLM2.
CPU_KV = """ggml_aligned_malloc: insufficient memory (attempted to allocate 65919.38 MB)
ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 69121474560
alloc_tensor_range: failed to allocate CPU buffer of size 69121474560
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
"""


def test_an_allocation_failure_names_the_buffer_and_its_size():
    for text, buffer, size in ((CUDA_WEIGHTS, "CUDA0", 4617388032), (CPU_KV, "CPU", 69121474560)):
        tail = llama_log.LogTail()
        tail.feed(text)
        failure = tail.allocation_failure()
        assert (failure.buffer, failure.size) == (buffer, size)
    assert failure.mib == 65919
    tail = llama_log.LogTail()
    tail.feed("llama_model_load: error loading model: tensor 'x' has wrong shape\n")
    assert tail.allocation_failure() is None  # another reason: no memory advice
