"""One-file pipelines: ``cai run pipelines/NAME.yaml`` chains stages into one run directory.

A pipeline is YAML::

    name: quickstart
    out: runs/quickstart
    defaults: {model: default}          # given to every stage that takes the option
    stages:
      - {stage: critiques, prompts: red-team, limit: 8}
      - {stage: sft, data: "{critiques}/sft.jsonl", max_steps: 8}

Each stage is a ``cai`` command (critiques, preferences, sft, rm, dpo, rloo, grpo, online-dpo,
and compare for ``cai eval compare``) whose options are the command's own, validated against its
signature, so no option is written twice. A stage's
``out`` defaults to ``OUT/NAME`` (``name`` defaults to the stage), and ``{NAME}`` in a value is an
earlier stage's ``out``. A finished stage leaves a marker with a hash of its options; a rerun
skips it, and a stage whose options changed runs again (the commands resume their own work).
``key.sub=value`` overrides (``--set``) apply before validation: ``out=runs/x``,
``critiques.limit=4``, ``defaults.model=path``. Every problem is reported at once, with file and
line.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError, create_model

from .errors import ConfigError, Problem
from .store import key, write_atomic
from .yamlfile import Locator, load_yaml, loc_to_field

MARKER = ".cai-stage-done"
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_-]+)\}")


def commands() -> dict[str, Any]:
    from .cli import evaluate as cli_eval, generate as cli_generate, train as cli_train

    return {
        "critiques": cli_generate.generate_critiques,
        "preferences": cli_generate.generate_preferences,
        "sft": cli_train.train_sft_cmd,
        "rm": cli_train.train_rm_cmd,
        "dpo": cli_train.train_dpo_cmd,
        "rloo": cli_train.rloo_cmd,
        "grpo": cli_train.grpo_cmd,
        "online-dpo": cli_train.online_dpo_cmd,
        "compare": cli_eval.eval_compare,
    }


def _options_model(name: str, fn) -> type:
    """A pydantic model of a command's options, from its signature (extra keys forbidden)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = {}
    for pname, param in inspect.signature(fn).parameters.items():
        hint = hints[pname]
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (base, default)
    return create_model(f"{name}_options", __config__=ConfigDict(extra="forbid"), **fields)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` overrides; a stage is addressed by its name."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError([Problem("--set", None, item, "expected key.sub=value")])
        path, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        parts = path.split(".")
        if parts[0] in ("name", "out") and len(parts) == 1:
            data[parts[0]] = value
        elif parts[0] == "defaults" and len(parts) == 2:
            data.setdefault("defaults", {})[parts[1]] = value
        elif len(parts) == 2:
            stages = [
                s
                for s in data.get("stages") or []
                if isinstance(s, dict) and s.get("name", s.get("stage")) == parts[0]
            ]
            if not stages:
                raise ConfigError([Problem("--set", None, path, f"no stage named {parts[0]!r}")])
            stages[0][parts[1]] = value
        else:
            raise ConfigError(
                [Problem("--set", None, path, "use name, out, defaults.KEY or STAGE.KEY")]
            )
    return data


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate a pipeline; return ``{"name", "out", "stages": [(name, stage, options, out)]}``."""
    path = Path(path)
    data, where = load_yaml(path)
    file = str(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, "", "a pipeline must be a YAML mapping")])
    data = apply_overrides(data, overrides or [])
    problems: list[Problem] = []
    for k in set(data) - {"name", "out", "defaults", "stages"}:
        problems.append(Problem(file, where.line((k,)), k, "unknown key"))
    for k in ("name", "out", "stages"):
        if k not in data:
            problems.append(Problem(file, 1, k, "required key is missing"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(Problem(file, where.line(("defaults",)), "defaults", "must be a mapping"))
        defaults = {}
    stages = data.get("stages") or []
    if not isinstance(stages, list) or not stages:
        problems.append(Problem(file, where.line(("stages",)), "stages", "list at least one stage"))
        stages = []
    out_root = Path(str(data.get("out", "runs/pipeline")))
    resolved, outs = [], {}
    table = commands()
    for i, spec in enumerate(stages):
        loc = ("stages", i)
        if not isinstance(spec, dict) or spec.get("stage") not in table:
            problems.append(
                Problem(
                    file,
                    where.line(loc),
                    loc_to_field((*loc, "stage")),
                    f"stage must be one of {', '.join(table)}",
                )
            )
            continue
        stage = spec["stage"]
        name = str(spec.get("name", stage))
        if name in outs:
            problems.append(
                Problem(
                    file,
                    where.line(loc),
                    loc_to_field(loc),
                    f"two stages named {name!r}: give one a `name`",
                )
            )
        fn = table[stage]
        params = inspect.signature(fn).parameters
        opts = {k: v for k, v in defaults.items() if k in params}
        opts.update({k: v for k, v in spec.items() if k not in ("stage", "name")})
        opts.setdefault("out", str(out_root / name))
        opts = _substitute(opts, outs, problems, file, where, loc)
        try:
            model = _options_model(stage, fn).model_validate(opts)
        except ValidationError as err:
            for e in err.errors():
                sub = (*loc, *e["loc"])
                msg = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
                problems.append(Problem(file, where.line(sub), loc_to_field(sub), msg))
            continue
        outs[name] = str(opts["out"])
        resolved.append((name, stage, model.model_dump(), Path(opts["out"])))
    if problems:
        raise ConfigError(problems)
    return {"name": data["name"], "out": out_root, "stages": resolved}


def _substitute(opts, outs, problems, file, where: Locator, loc) -> dict[str, Any]:
    def one(k, v):
        if isinstance(v, list):  # a repeatable option: each item on its own
            return [one(k, x) for x in v]
        if not isinstance(v, str):
            return v
        for ref in PLACEHOLDER.findall(v):
            if ref not in outs:
                problems.append(
                    Problem(
                        file,
                        where.line((*loc, k)),
                        loc_to_field((*loc, k)),
                        f"{{{ref}}} is not an earlier stage",
                    )
                )
        return PLACEHOLDER.sub(lambda m: outs.get(m.group(1), m.group(0)), v)

    return {k: one(k, v) for k, v in opts.items()}


def stage_argv(stage: str, options: dict[str, Any]) -> list[str]:
    """The ``cai`` command line equivalent to running ``stage`` with ``options``."""
    group = {"critiques": "generate", "preferences": "generate", "compare": "eval"}.get(
        stage, "train"
    )
    args = [group, stage]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args += [flag] if v else []
        elif isinstance(v, list):  # a repeatable option: --base-url A --base-url B
            for item in v:
                args += [flag, str(item)]
        elif v is not None:
            args += [flag, str(v)]
    return args


def run_pipeline(pipeline: dict[str, Any], echo) -> list[tuple[str, str]]:
    """Run every stage not already done with the same options; returns (stage, status) pairs."""
    table = commands()
    report = []
    for name, stage, options, out in pipeline["stages"]:
        digest = key(stage, {k: str(v) for k, v in options.items()})
        marker = out / MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("options") == digest:
            echo(f"[{name}] done already ({out})")
            report.append((name, "skipped"))
            continue
        echo(f"[{name}] cai {stage} -> {out}")
        from . import cli

        cli.ARGV = stage_argv(stage, options)  # what --accelerate-config relaunches
        table[stage](**options)
        write_atomic(marker, json.dumps({"stage": stage, "options": digest}) + "\n")
        report.append((name, "ran"))
    return report
