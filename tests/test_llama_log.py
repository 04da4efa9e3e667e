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
