"""``python -m stabilitylab.book run|check|list``: see :mod:`stabilitylab.book`."""

from __future__ import annotations

import argparse
import sys
import time

from stabilitylab.book import SCALES, ChapterError, check, chapters, find_root, resolve_chapters, run_chapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stabilitylab.book", description=__doc__)
    parser.add_argument("--root", default=None, help="the book's folder (default: where _toc.yml is)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute chapters and store them with their outputs")
    run.add_argument("chapters", nargs="*", help="chapter names (default: every chapter)")
    run.add_argument("--scale", default="small", choices=SCALES + ("auto",))
    run.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    commands.add_parser("check", help="fail when a stored chapter no longer matches its code")
    commands.add_parser("list", help="list the chapters")
    args = parser.parse_args(argv)

    try:
        root = find_root(args.root)
        if args.command == "list":
            for path in chapters(root):
                print(path.relative_to(root))
            return 0
        if args.command == "check":
            problems = check(root)
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{len(chapters(root))} chapter(s) checked, {len(problems)} problem(s)")
            return 1 if problems else 0
        selected = resolve_chapters(args.chapters, root)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    failed = []
    for i, path in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {path.stem} at scale {args.scale} ...", flush=True)
        try:
            run_chapter(path, scale=args.scale, root=root, progress=not args.no_progress)
        except ChapterError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            failed.append(path.stem)
    print(f"{len(selected) - len(failed)}/{len(selected)} chapter(s) ran in {time.perf_counter() - start:.1f} s")
    if failed:
        print(f"failed: {', '.join(failed)} (their stored notebooks are unchanged)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
