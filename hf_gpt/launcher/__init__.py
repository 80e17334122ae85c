"""The `hf-gpt` console script, shipped as the top-level package `hf_gpt_launcher`.

Importing `hf_gpt` loads torch and transformers (it registers the model with transformers' Auto classes), which
takes seconds; a Ctrl-C in those seconds would end in Python's traceback, since no code of ours runs yet. This
launcher lives outside the `hf_gpt` package, so it runs first and turns that Ctrl-C into the CLI's usual exit
status 130. And the commands that need neither (the tokenizer and data commands) start at once: for them the
package's own `__init__` is skipped, as they import none of what it registers.
"""

import importlib.util
import sys

# Commands whose code imports neither torch nor transformers before it works (see hf_gpt/data).
LIGHT_COMMANDS = ("train-tokenizer", "prepare-data")


def skip_package_init() -> None:
    """Stand an unexecuted module in for `hf_gpt`, with the package's search path, so its submodules import
    without running `hf_gpt/__init__.py`."""
    if "hf_gpt" in sys.modules:  # already imported (a caller of main() in Python): keep it
        return
    spec = importlib.util.find_spec("hf_gpt")
    if spec is not None and spec.submodule_search_locations is not None:
        sys.modules["hf_gpt"] = importlib.util.module_from_spec(spec)


def main() -> int:
    try:
        command = next((word for word in sys.argv[1:] if not word.startswith("-")), "")
        if command in LIGHT_COMMANDS or command == "":  # "": `hf-gpt --help`, or a usage error
            skip_package_init()
        from hf_gpt.cli import main as run
    except KeyboardInterrupt:
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
