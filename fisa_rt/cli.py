"""The `fisa-rt` command: one entry point, one subcommand per job, each a thin call into the library.

User errors (fisa_rt.errors.FisaError) print one line and exit 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .errors import FisaError

EXAMPLES = {
    "models": "fisa-rt models\n  fisa-rt models --simo",
    "config": "fisa-rt config fisa-vit-b16 > my-model.json",
}


def _models(args: argparse.Namespace) -> None:
    from .config import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        line = f"{name:22s} clip={cfg.clip.model_name:22s} head={cfg.classifier.head:15s} image={cfg.image_size}"
        if args.simo:
            from .model import create_model

            line += f"  {create_model(cfg).apply_simo()}"
        print(line)


def _config(args: argparse.Namespace) -> None:
    from .config import get_model_config

    print(get_model_config(args.name).to_json())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fisa-rt", description="FISA open-vocabulary segmentation.")
    parser.add_argument("--debug", action=argparse.BooleanOptionalAction, default=False, help="show tracebacks of errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, func) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    models = verb("models", "list the shipped model configs", _models)
    models.add_argument("--simo", action=argparse.BooleanOptionalAction, default=False,
                        help="also build each model (random weights) and report its SIMO trainable parameters")
    config = verb("config", "print a shipped model config as JSON", _config)
    config.add_argument("name", help="config name (see `fisa-rt models`)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FisaError as exc:
        if args.debug:
            raise
        print(f"fisa-rt: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
