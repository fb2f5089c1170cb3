"""Export the catalogue's JSON Schemas (and the MLSysOps descriptions') to `events/schemas/` (`make schemas`),
or check they are current."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mapemesh.events.catalogue import CATALOGUE

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"


def render() -> dict[str, str]:
    """File name -> JSON text of every schema, plus an index of the catalogue."""
    files: dict[str, str] = {}
    index = []
    for event_type, model in sorted(CATALOGUE.items()):
        schema = model.model_json_schema()
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": model.dataschema(),
                  "title": event_type, "description": model.summary, **{k: v for k, v in schema.items()
                                                                        if k not in ("title", "description")}}
        files[f"{event_type}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        index.append({"type": event_type, "dataschema": model.dataschema(), "summary": model.summary})
    files["index.json"] = json.dumps(index, indent=2) + "\n"
    # The MLSysOps descriptions the northbound API takes, next to the events that carry them.
    from mapemesh.descriptions import MODELS

    for name, model in sorted(MODELS.items()):
        schema = model.model_json_schema()
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"https://mapemesh.dev/schemas/descriptions/{name}.json", "title": name,
                  **{k: v for k, v in schema.items() if k != "title"}}
        files[f"description.{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def stale(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Schema files that are missing, different or left over."""
    wanted = render()
    problems = [name for name, text in wanted.items()
                if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text]
    problems += [p.name for p in directory.glob("*.json") if p.name not in wanted]
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    """Write the schemas, or with --check report stale ones and fail."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the exported schemas are stale")
    parser.add_argument("--dir", type=Path, default=SCHEMAS_DIR)
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.dir)
        for name in problems:
            print(f"stale: {args.dir / name}", file=sys.stderr)
        if problems:
            print("run `make schemas` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for p in args.dir.glob("*.json"):
        p.unlink()
    for name, text in render().items():
        (args.dir / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(CATALOGUE)} schemas to {args.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
