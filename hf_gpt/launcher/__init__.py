"""The `hf-gpt` console script, shipped as the top-level package `hf_gpt_launcher`.

Importing `hf_gpt` loads torch and transformers, which takes seconds; a Ctrl-C in those seconds would end in
Python's traceback, since no code of ours runs yet. This launcher lives outside the `hf_gpt` package, so it
runs first and turns that Ctrl-C into the CLI's usual exit status 130.
"""

import sys


def main() -> int:
    try:
        from hf_gpt.cli import main as run
    except KeyboardInterrupt:
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
