"""The zoo build's child process: ``python -m hm3.zoo.child KIND FAMILY SIZE SEED STAGING TARGET PARENT [--quiet]``.

Started by :func:`hm3.zoo.build.build_zoo` (process PARENT) with the portable numerics' environment
(:mod:`hm3.zoo.numerics`) and the lock of STAGING (:mod:`hm3.zoo.staging`); trains and scores everything into
STAGING and writes its manifest, nothing else. It dies with PARENT: a killed ``hm3 zoo build`` leaves no build
running that nobody waits for, nor one that writes into a folder the next build clears.
A user error is left in STAGING/:data:`hm3.zoo.build.CHILD_ERROR` for the parent (exit 2). The portable
environment is in place from the process's start, so torch may load with this module's imports;
:func:`~hm3.zoo.numerics.apply_in_child` refuses to build without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from hm3.errors import UserError
from hm3.zoo.build import CHILD_ERROR, build_into
from hm3.zoo.config import ZooConfig
from hm3.zoo.numerics import apply_in_child
from hm3.zoo.staging import die_with_parent


def main(argv: list[str]) -> int:
    """Build the zoo ``argv`` names into its staging folder; 0 on success, 2 on a user error."""
    kind, family, size, seed, staging, target, parent = argv[:7]
    die_with_parent(int(parent))
    apply_in_child()
    console = Console(stderr=True, quiet="--quiet" in argv[7:])
    try:
        build_into(ZooConfig(kind, family, size, int(seed)), Path(staging), Path(target), console)
    except UserError as error:
        (Path(staging) / CHILD_ERROR).write_text(f"{error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
