"""Pieces the experiment and benchmark scripts share: where data lives, how clip datasets are built from it, and
the command line (`cli_main`: ``--help`` from a config's fields, user errors as one line and exit status 2)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import os
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset


@dataclass
class DataConfig:
    """Which clips a world model trains and is evaluated on."""

    root: str = "data/metaworld_64"   # episode store (collect_metaworld.py), LeRobot folder, or "synthetic"
    format: str = "auto"              # auto | store | lerobot | synthetic (auto: meta/info.json in root -> lerobot)
    camera: str = ""                  # lerobot: camera key, observation.images.top or top ('' = the first)
    harmonise_actions: bool = False   # lerobot: zero-pad / cut actions to the model's action_dim (else: error)
    tasks: tuple[str, ...] = ()       # task names to keep (empty: all)
    stride: int = 1                   # keep every stride-th frame
    window_step: int = 1              # raw frames between consecutive clip starts of an episode
    augment_shift: int = 0            # random translation in pixels (HARP: 4)
    eval_split: str = "test"          # split used for periodic evaluation ("" = none)
    synthetic_clips: int = 256        # size of the synthetic dataset when root == "synthetic"
    frames_dir: str = ""              # store: keep frames in a file here instead of RAM (splits larger than memory)


def build_clip_datasets(config: DataConfig, *, context: int, future: int, image_size: int,
                        action_dim: int) -> tuple[Dataset, Dataset | None]:
    """(train, eval) clip datasets in the WorldModel batch convention, from the source ``config.format`` names."""
    kind = data_format(config)
    if kind == "synthetic":
        from foresight.testing import SyntheticClips

        kw = dict(context_frames=context, future_frames=future, image_size=image_size, action_dim=max(action_dim, 2),
                  square=max(2, image_size // 8))
        return (SyntheticClips(config.synthetic_clips, seed=0, augment_shift=config.augment_shift, **kw),
                SyntheticClips(max(16, config.synthetic_clips // 8), seed=1, **kw))

    if kind == "lerobot":
        return _lerobot_clip_datasets(config, context=context, future=future, image_size=image_size,
                                      action_dim=action_dim)

    from foresight.data import ClipDataset, EpisodeDataset
    from foresight.data.episodes import MANIFEST

    root = Path(config.root)
    if not (root / MANIFEST).is_file():
        raise UsageError(
            f"no episode dataset at {root}: collect one with `python experiments/collect_metaworld.py "
            f"--out {root}` or pass data.root=synthetic for a smoke run")
    tasks = list(config.tasks) or None

    def clips(split: str, augment: int) -> Any:
        episodes = EpisodeDataset(root, split=split, tasks=tasks)
        if len(episodes) == 0:
            return None
        ds = ClipDataset(episodes, context=context, future=future, stride=config.stride,
                         window_step=config.window_step, augment_shift=augment, with_states=False,
                         frames_dir=Path(config.frames_dir) / split if config.frames_dir else None)
        if ds.image_size != image_size:
            raise UsageError(f"dataset {root} has {ds.image_size}x{ds.image_size} frames, the model expects "
                             f"{image_size}x{image_size}")
        if action_dim and ds.action_dim != action_dim:
            raise UsageError(f"dataset {root} has {ds.action_dim}-D actions (stride {config.stride}), the model "
                             f"expects {action_dim}-D")
        return ds

    train = clips("train", config.augment_shift)
    if train is None:
        raise UsageError(f"dataset {root} has no training episodes{f' for tasks {tasks}' if tasks else ''}")
    return train, (clips(config.eval_split, 0) if config.eval_split else None)


DATA_FORMATS = ("auto", "store", "lerobot", "synthetic")


def data_format(config: DataConfig) -> str:
    """The data source ``config`` names: 'synthetic', 'lerobot' or 'store' (``format=auto`` looks at ``root``)."""
    if config.format not in DATA_FORMATS:
        raise UsageError(f"data.format={config.format!r}: expected one of {', '.join(DATA_FORMATS)}")
    if config.format != "auto":
        return config.format
    if config.root == "synthetic":
        return "synthetic"
    return "lerobot" if (Path(config.root).expanduser() / "meta" / "info.json").is_file() else "store"


def _lerobot_clip_datasets(config: DataConfig, *, context: int, future: int, image_size: int,
                           action_dim: int) -> tuple[Dataset, Dataset | None]:
    """Clips of a local LeRobot v2.1 / v3.0 folder (foresight.data.lerobot), resized to the model's image size."""
    from foresight.data.lerobot import LeRobotEpisodes, LeRobotFormatError, lerobot_clips

    root = Path(config.root).expanduser()
    tasks = list(config.tasks) or None
    # ClipDataset's default action_reduce='concat': the model sees stride * raw width
    if action_dim and action_dim % config.stride:
        raise UsageError(f"data.stride={config.stride} concatenates that many raw actions, but the model's "
                         f"action_dim {action_dim} is not a multiple of it")
    raw_width = action_dim // config.stride if action_dim else None
    try:
        probe = LeRobotEpisodes(root, camera=config.camera or None, tasks=tasks)
        width = probe.stored_action_dim
        if raw_width and width is not None and width != raw_width and not config.harmonise_actions:
            raise UsageError(f"LeRobot dataset {root} has {width}-D actions, the model expects {raw_width}-D "
                             f"(stride {config.stride}): pass data.harmonise_actions=true to zero-pad / cut them, "
                             f"or model.action_dim={width * config.stride}")
        present = {r.split for r in probe.records}

        def clips(split: str, augment: int) -> Any:
            if split not in present:
                return None
            return lerobot_clips(root, context=context, future=future, camera=config.camera or None,
                                 image_size=image_size, action_dim=raw_width, split=split, tasks=tasks,
                                 stride=config.stride, window_step=config.window_step, augment_shift=augment,
                                 with_states=False, task_names=probe.task_names)

        train = clips("train", config.augment_shift)
        if train is None:
            raise UsageError(f"LeRobot dataset {root} has no training episodes (info.json splits "
                             f"{probe.info.get('splits')}){f' for tasks {tasks}' if tasks else ''}")
        return train, (clips(config.eval_split, 0) if config.eval_split else None)
    except LeRobotFormatError as e:
        raise UsageError(str(e)) from e


# ---------------------------------------------------------------------------------------------------- command lines
#
# Every script in experiments/ and benchmarks/ runs through `cli_main`, so they all answer --help the same way
# and turn a user's mistake into one line and exit status 2. Two styles of command line are in use:
#
#   * a dataclass config built by `foresight.config.build_config` (``key=value`` / ``--key value``):
#         if __name__ == "__main__":
#             cli_main(main, MyConfig, __doc__)        # main(argv) -> ...; --help lists MyConfig's fields
#   * argparse, with `argparser(doc)` for the shared help format:
#         if __name__ == "__main__":
#             cli_main(main)                           # main(argv) parses argv itself


class UsageError(ValueError):
    """A mistake in what the user typed or pointed at (a bad option, a missing input folder, a wrong model type).

    `cli_main` reports it as one line and exit status 2, like `foresight.config.ConfigError`.
    """


def write_results(path: str | os.PathLike, results: dict) -> dict:
    """A benchmark's results as JSON at ``path``, written atomically (nothing when ``path`` is empty); returns them."""
    if path:
        from foresight.checkpoint import atomic_write_json

        atomic_write_json(path, results)
        print(f"wrote {path}")
    return results


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that `cli_main` reports as a user's error (one line, exit 2) rather than as a crash."""
    from foresight.checkpoint import CheckpointError
    from foresight.config import ConfigError

    # FileNotFoundError: the scripts' inputs (a data folder, a config file, a model directory) are the files a
    # user names; CheckpointError names the missing or corrupt checkpoint file.
    return (UsageError, ConfigError, FileNotFoundError, CheckpointError)


DEBUG_ENV = "FORESIGHT_DEBUG"


def cli_main(main: Callable[..., Any], config_class: Any = None, doc: str | None = None, *,
             argv: Sequence[str] | None = None, help_text: Callable[[list[str]], str] | None = None) -> Any:
    """Run a script's ``main(argv)`` as a command: ``--help``, user errors as one line + exit 2, real crashes as-is.

    * ``--help`` / ``-h``: with ``config_class`` (a dataclass, or an instance for other defaults), prints
      `config_help` (each field's type, default and trailing comment) and exits 0; ``help_text(argv)`` replaces
      that text when a script builds its options from the arguments (``--model harp --help``). Without either,
      ``main`` answers ``--help`` itself (argparse).
    * a `user_errors` exception prints ``<script>: error: <message>`` on one line of stderr and exits 2;
      ``--debug`` or ``FORESIGHT_DEBUG=1`` re-raises it with its traceback. Any other exception is a crash and
      keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name or "script"
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if any(a in ("-h", "--help") for a in argv) and (config_class is not None or help_text is not None):
        text = help_text(argv) if help_text is not None else config_help(config_class, doc, prog=prog)
        print(text)
        sys.exit(0)
    try:
        return main(argv)
    except user_errors() as e:
        if debug:
            raise
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        sys.exit(2)


def error_message(e: BaseException) -> str:
    """One line: the exception's message with its line breaks folded (FileNotFoundError: the file it names)."""
    if isinstance(e, FileNotFoundError) and e.filename:
        text = f"{e.strerror or 'no such file or directory'}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


# ------------------------------------------------------------------ help text from dataclass fields


def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line doc}`` of a dataclass: the field's trailing ``# comment`` or the string on the next line
    (CleanRL style), else ``metadata["help"]``. Base classes are read too."""
    docs: dict[str, str] = {}
    for klass in reversed([c for c in inspect.getmro(cls) if dataclasses.is_dataclass(c)]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        try:
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.COMMENT:
                    comments.setdefault(tok.start[0], tok.string.lstrip("#").strip())
        except (tokenize.TokenError, IndentationError):
            pass
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        statements = body.body
        for i, node in enumerate(statements):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            name = node.target.id
            after = statements[i + 1] if i + 1 < len(statements) else None
            # A comment on the field's first line; for a multi-line field, on any of its lines.
            found = comments.get(node.lineno) or next(
                (comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments), "")
            if not found and isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant) \
                    and isinstance(after.value.value, str):
                found = " ".join(after.value.value.split())
            if found:
                docs[name] = found
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = str(f.metadata["help"])
    return docs


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def config_fields(config: Any, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(key, type, default, doc)`` for every field of a dataclass config (class or instance), nested ones with
    dotted keys; defaults of an instance are its values (a preset's)."""
    cls = config if isinstance(config, type) else type(config)
    instance = config if not isinstance(config, type) else None
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[tuple[str, str, Any, str]] = []
    for f in dataclasses.fields(cls):
        if instance is not None:
            value = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            value = dataclasses.MISSING
        annotation = hints.get(f.name, Any)
        if dataclasses.is_dataclass(annotation) or dataclasses.is_dataclass(value):
            rows.extend(config_fields(value if dataclasses.is_dataclass(value) else annotation, f"{prefix}{f.name}."))
            continue
        rows.append((prefix + f.name, _type_name(annotation), value, docs.get(f.name, "")))
    return rows


def format_options(rows: Sequence[tuple[str, str, Any, str]], *, flag: str = "") -> str:
    """Aligned ``  key  type  default  doc`` lines."""
    def default(v: Any) -> str:
        if v is dataclasses.MISSING:
            return "(required)"
        if isinstance(v, tuple):
            v = list(v)
        return "''" if v == "" else str(v)

    cells = [(flag + k, t, default(v), d) for k, t, v, d in rows]
    if not cells:
        return "  (none)"
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    w2 = min(max(len(c[2]) for c in cells), 24)
    return "\n".join(f"  {k:<{w0}}  {t:<{w1}}  {v:<{w2}}  {d}".rstrip() for k, t, v, d in cells)


def config_help(config: Any, doc: str | None = None, *, prog: str = "script",
                sections: Sequence[tuple[str, Any]] = ()) -> str:
    """--help of a script whose options are a dataclass config parsed by `foresight.config.build_config`.

    ``sections``: more ``(title, config)`` blocks (or ``(title, rows)`` from ``config_fields(cfg, "model.")``)."""
    cls = config if isinstance(config, type) else type(config)
    presets = sorted(getattr(cls, "PRESETS", {}))
    head = f"usage: {prog} [--preset NAME] [--config FILE.yaml] [key=value | --key value ...] [--debug]"
    parts = [head]
    if doc:
        parts += ["", doc.strip()]
    parts += ["", "options (key=value, --key value or --key=value; nested keys with dots; lists as [a,b]):",
              format_options(config_fields(config))]
    for title, section in sections:
        rows = section if isinstance(section, (list, tuple)) else config_fields(section)
        parts += ["", title, format_options(rows)]
    general = []
    if presets:
        general.append(f"  --preset NAME        one of {', '.join(presets)} "
                       "(applied before the file and the overrides)")
    general += ["  --config FILE.yaml   values from a YAML file (overridden by the command line)",
                f"  --debug              show the Python traceback of a usage error (or {DEBUG_ENV}=1)",
                "  -h, --help           this text"]
    parts += ["", "general:", *general]
    return "\n".join(parts)


# ------------------------------------------------------------------ argparse with the same help and errors


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse help that shows each option's type and default after its doc line."""

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return getattr(action.type, "__name__", "str").upper()

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        if action.nargs == 0:  # a flag
            return text or "flag"
        kind = getattr(action.type, "__name__", None) or (type(action.default).__name__
                                                          if action.default not in (None, [], ()) else "str")
        if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
            kind = f"list of {kind}"
        default = "required" if action.required else f"default: {action.default!r}".replace("%", "%%")
        return f"{text} [{kind}, {default}]".strip()


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter` and one-line errors (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def argparser(doc: str | None = None, **kwargs: Any) -> ArgumentParser:
    """The parser every argparse script starts from: ``p = argparser(__doc__); p.add_argument(...)``."""
    kwargs.setdefault("epilog", f"--debug (or {DEBUG_ENV}=1) shows the Python traceback of a usage error.")
    return ArgumentParser(description=doc, **kwargs)
