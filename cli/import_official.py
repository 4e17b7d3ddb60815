"""``blockdrop import-official CKPT --arch ARCH --out DIR``."""

from __future__ import annotations

import argparse

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from models.official import OFFICIAL_ARCHS

    parser = subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsInHelp)
    parser.add_argument("checkpoint", help="a .t7 file from the original repository")
    parser.add_argument("--arch", required=True, choices=sorted(OFFICIAL_ARCHS), help="the checkpoint's architecture")
    parser.add_argument("--out", required=True, help="artifact folder to write")
    parser.add_argument("--backbone", help="backbone-only checkpoint, when CKPT holds only the agent")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from models.official import import_official

    manifest = import_official(args.checkpoint, args.arch, args.out, args.backbone)
    print(f"wrote {args.out}: kind {manifest.kind}, {manifest.flops['full']:.3g} FLOPs full network")
    return 0
