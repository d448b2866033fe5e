"""Strict construction of frozen config dataclasses from dicts (YAML run configs, config.json),
and of models from their safetensors weights (`load_weights`).

Unknown keys and wrong types are refused with an error naming the key, the file and what is
allowed, so a bad config fails before any training starts.
"""

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from vidlm.errors import UserError

T = TypeVar("T")


class ConfigError(ValueError, UserError):
    """A config that does not match its dataclass."""


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _check(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value))]
        else:
            items = [_check(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_check(k, kt, where): _check(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: Any, *, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    except ValueError as e:  # the dataclass's own __post_init__ checks
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict:
    """A JSON/YAML-ready dict of a (possibly nested) config dataclass; tuples become lists."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Build `cls` from a YAML file, with errors that name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(cls, data, where=str(path))


def read_json(path: Path) -> Any:
    """The JSON document in `path`; a ConfigError naming the file if it is not JSON."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


def load_weights(model, weights: Path, config: Path, export: str, device="cpu"):
    """Load a safetensors file into `model` (never unpickles), strictly: a file that is not
    safetensors, or whose tensors do not match the architecture in `config` (a missing or extra
    key, another shape), is refused with a ConfigError naming it and `export`, the command that
    writes it again."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{weights} is not a readable safetensors file ({e}); write it again with `{export}`") from None
    own = model.state_dict()
    kinds = [k for k, v in state.items() if k in own and v.is_floating_point() != own[k].is_floating_point()]
    if kinds:  # float16 for float32 is fine (shipped weights are stored so); integers for floats are not
        raise ConfigError(f"{weights} does not match the architecture in {config}: {kinds[0]} holds "
                          f"{state[kinds[0]].dtype}, the model {own[kinds[0]].dtype}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ
        raise ConfigError(f"{weights} does not match the architecture in {config}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match the architecture in {config}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    return model


def resolve_weights(path: str | Path) -> Path:
    """A folder path, or the name of weights shipped inside the package (e.g. "shapes-demo")."""
    path = Path(path)
    if path.is_dir():
        return path
    shipped = Path(__file__).resolve().parent / "weights" / str(path)
    if shipped.is_dir():
        return shipped
    if len(path.parts) == 1 and not path.suffix:
        raise FileNotFoundError(
            f"no weights named {str(path)!r}: not a folder here and not shipped at {shipped}; "
            f"pass a folder holding tokenizer/, text/ and lm/ (as written by `vidlm tokenizer "
            f"export` and `vidlm lm export`), or build the demo weights with `vidlm demo`"
        )
    raise FileNotFoundError(f"model folder {path} does not exist")


def init_folder(init_from: str, part: str, ours: Any) -> Path:
    """The exported weights a run's `init_from` names (a folder written by `vidlm PART export`, a
    model folder holding PART/, or shipped weights by name), refused at once with a ConfigError
    unless their config is `ours` (this run's architecture, a config dataclass; fields their
    config.json predates count as the defaults they were)."""
    path = resolve_weights(init_from)
    path = path / part if (path / part).is_dir() else path
    if not (path / "config.json").is_file():
        raise ConfigError(f"init_from: {init_from} holds no exported {part} (config.json, model.safetensors); "
                          f"write one with `vidlm {part} export --run RUN --out DIR`")
    theirs = read_json(path / "config.json")
    theirs = theirs.get("config", theirs) if isinstance(theirs, dict) and "format" in theirs else theirs
    theirs, ours = to_dict(from_dict(type(ours), theirs, where=str(path / "config.json"))), to_dict(ours)
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"init_from: {path} is another architecture than this run's (differs in {diff}); "
                          "use the same preset and model overrides")
    return path


def parse_size(text: str) -> tuple[int, int]:
    """argparse type of every --size: "WIDTHxHEIGHT" -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT like 64x64, got {text!r}") from None
    return w, h


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every training run sets; both trainers' TrainConfig extend it (and may change a default)."""

    preset: str = "debug"
    """The model preset."""
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of the preset's model config to override."""
    run_dir: str = "runs/run"
    """Run folder (checkpoints, TensorBoard, metrics.jsonl); --run overrides."""
    steps: int = 1000
    """Optimizer steps."""
    micro_batch_size: int = 4
    """Samples (clips or packed rows) per rank per micro step."""
    grad_accum: int = 1
    """Micro steps per optimizer step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup: int = 100
    """Linear warm-up steps."""
    betas: tuple[float, ...] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient clipping (0 = off)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    """"auto": bf16 where the hardware has it (GPUs; CPUs with AMX or AVX512-BF16), else fp32
    (`vidlm.runtime.resolve_precision`)."""
    seed: int = 0
    """Seed of the weights and of the data stream."""
    deterministic: bool = False
    """CUDA: deterministic kernels (`vidlm.runtime.set_deterministic`), so a resumed GPU run
    repeats the straight run's losses bitwise, as a CPU run always does; costs some speed."""
    log_every: int = 10
    """Steps between scalar logs."""
    val_every: int = 100
    """Steps between validations (and at the end)."""
    ckpt_every: int = 200
    """Steps between checkpoints (and at the end)."""
    keep_last: int = 2
    """Checkpoints kept."""
    nonfinite_limit: int = 10
    """Skipped non-finite steps tolerated before stopping."""
    max_minutes: float | None = None
    """Wall-clock budget: stop (with a checkpoint) when it is spent; the schedule keeps `steps`."""
    threads: int = 0
    """torch threads per rank (0: torch's default)."""

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError(f"betas take 2 values, got {list(self.betas)}")

    def model_config(self, presets: dict, cls: type[T], fixed: dict | None = None) -> T:
        """The preset `self.preset` of `presets` with `self.model` over it (and `fixed` over both:
        fields the run decides, such as the LM's vocab size, which `model` may not set)."""
        if self.preset not in presets:
            raise ConfigError(f"preset {self.preset!r} is not one of {sorted(presets)}")
        base, fixed = to_dict(presets[self.preset]), fixed or {}
        allowed = sorted(set(base) - set(fixed))
        if unknown := sorted(set(self.model) - set(base)):
            raise ConfigError(f"model: unknown key(s) {unknown}; allowed: {allowed}")
        if taken := sorted(set(self.model) & set(fixed)):
            raise ConfigError(f"model: {taken} comes from the data, not the config; allowed: {allowed}")
        return from_dict(cls, {**base, **self.model, **fixed}, where="model")
