"""Model specs: a network named by the function that builds it, "package.module:function" or "path/file.py:function".

A worker rebuilds its network from the run's config alone, and the config's `model` is a string, so a network the
user defines in their own code travels as the import path of its builder. A script's `__main__` is not importable
from another process; its functions travel as the script's file path instead, and a worker loads that file as a
private module (once per process). Loading runs the script's top level, so a script that trains must keep its
training call under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable

from auglocal.engine.models.base import LayeredModel

#: the modules a script may already be loaded as in this process: the script itself, or multiprocessing's re-run
MAIN_NAMES = ("__main__", "__mp_main__")
#: prefix of the private module name a script file is loaded under
PRIVATE_PREFIX = "_auglocal_user_"
#: the script file whose top level this process is running to find a model function, while it runs
_loading: list[str] = []


#: multiprocessing's functions that run the parent's script as `__mp_main__` in a new worker process
_MAIN_FIXUPS = ("_fixup_main_from_path", "_fixup_main_from_name")


def loading_script() -> str | None:
    """The script this process is running only to import functions from it, if any: a worker loading the user's
    script for its model function, or multiprocessing re-running the parent's script in a new worker. A training
    call made from such a script's top level (no `if __name__ == "__main__":` guard) would start a second run
    inside a worker, so auglocal.train refuses it."""
    if _loading:
        return _loading[-1]
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in _MAIN_FIXUPS and "multiprocessing" in frame.f_code.co_filename:
            main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
            return getattr(main, "__file__", None) or "the main script"
        frame = frame.f_back
    return None


def is_spec(name: str) -> bool:
    """A model spec has a colon ("module:function"); registered names never do."""
    return isinstance(name, str) and ":" in name


def split_spec(spec: str) -> tuple[str, str]:
    """(module or file path, function) of a spec; the last colon separates them (a path may hold colons)."""
    where, _, function = spec.rpartition(":")
    if not where or not function:
        raise ValueError(f"model spec {spec!r} must read 'package.module:function' or 'path/to/file.py:function'")
    return where, function


def is_file_spec(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def _loaded_script(path: str):
    """The module `path` is already loaded as in this process (the running script), else None."""
    for name in MAIN_NAMES:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == path:
            return module
    return None


def _load_file(spec: str, path: str):
    """The module of a script file, loaded once per process under a private name (never as `__main__`)."""
    path = os.path.realpath(path)
    running = _loaded_script(path)
    if running is not None:
        return running
    name = PRIVATE_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    if not os.path.isfile(path):
        raise ValueError(f"model spec {spec!r}: file {path} does not exist")
    file_spec = importlib.util.spec_from_file_location(name, path)
    if file_spec is None or file_spec.loader is None:
        raise ValueError(f"model spec {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    _loading.append(path)
    try:
        file_spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[name]
        raise ValueError(f"model spec {spec!r}: running {path} failed: {type(err).__name__}: {err}") from err
    finally:
        _loading.pop()
    return module


def resolve_spec(spec: str) -> Callable:
    """The function a spec names, imported (not called); ValueError naming spec, module, function and the cause."""
    where, function = split_spec(spec)
    if is_file_spec(where):
        module = _load_file(spec, where)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as err:  # noqa: BLE001 - any failure while importing user code is the user's to see
            raise ValueError(f"model spec {spec!r}: cannot import module {where!r} "
                             f"({type(err).__name__}: {err})") from err
    target = module
    for part in function.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model spec {spec!r}: AttributeError: module {where!r} has no function "
                             f"{function!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model spec {spec!r}: {function!r} in module {where!r} is not callable "
                         f"(it is a {type(target).__name__})")
    return target


def _accepted_kwargs(fn: Callable, num_classes: int, input_size: int) -> dict:
    """The keyword arguments among num_classes / input_size that `fn` accepts (all of them under **kwargs)."""
    offered = {"num_classes": num_classes, "input_size": input_size}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in offered.items() if k in params and params[k].kind in usable}


def build_from_spec(spec: str, num_classes: int, input_size: int) -> LayeredModel:
    """Call the spec's function with what it accepts; a LayeredModel is used as is, (blocks, head) is stacked."""
    fn = resolve_spec(spec)
    _, function = split_spec(spec)
    made = fn(**_accepted_kwargs(fn, num_classes, input_size))
    if isinstance(made, LayeredModel):
        return made
    if isinstance(made, (tuple, list)) and len(made) == 2:
        from auglocal.engine.models.stack import from_blocks, is_block_list

        blocks, head = made
        if is_block_list(blocks):
            return from_blocks(blocks, head, num_classes=num_classes, input_size=input_size,
                               name=function.rsplit(".", 1)[-1])
    raise ValueError(f"model spec {spec!r}: {function}() returned {_describe(made)}; it must return a "
                     "LayeredModel or a pair (blocks, head): a list of nn.Module local layers in order, and the "
                     "classifier head")


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in value[:4])
        return f"a {type(value).__name__} of {len(value)} ({inner}{', ...' if len(value) > 4 else ''})"
    return f"an object of type {type(value).__name__}"


def model_spec_of(function: Callable) -> str:
    """The spec that names `function` in any process: "module:qualname", or "/abs/script.py:qualname" for a
    function of the running script (`__main__`). Lambdas and nested functions have no importable name."""
    qualname = getattr(function, "__qualname__", None)
    module_name = getattr(function, "__module__", None)
    if not callable(function) or not qualname or not module_name:
        raise ValueError(f"{function!r} is not a function with an importable name")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(f"{qualname} is a lambda or a function defined inside another function; worker processes "
                         "cannot import it: define the model function at the top level of a module or script")
    if module_name in MAIN_NAMES or module_name.startswith(PRIVATE_PREFIX):
        file = getattr(sys.modules.get(module_name), "__file__", None)
        if not file:
            raise ValueError(f"{qualname} is defined in an interactive session (no script file); worker processes "
                             "cannot import it: put it in a module or script file")
        return f"{os.path.realpath(file)}:{qualname}"
    return f"{module_name}:{qualname}"


#: top-level packages whose code is versioned with the install: their classes' counts and times stay valid
#: until the cache file's own format changes, so their cache keys carry no fingerprint (and stay as they were)
VERSIONED_PACKAGES = ("torch", "torchvision", "auglocal")


#: (path, mtime, size) -> digest: a dry run asks for the same few files once per counted block
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in _DIGESTS:
            with open(path, "rb") as f:
                _DIGESTS[key] = hashlib.sha256(f.read()).hexdigest()[:16]
        return _DIGESTS[key]
    except OSError:
        return "unreadable"


def code_fingerprint(objects) -> str | None:
    """A digest of the source files defining `objects` (classes or functions) that come from the user's code, None
    when all of them come from torch, torchvision or auglocal.

    The MAC and timing caches key a block by its class name and repr, and a network by its spec; neither changes
    when the user edits a block's forward or the function building the network, so without this the caches
    would serve the old network's counts and times (a wrong dry-run table, a worse balance)."""
    files = set()
    for obj in objects:
        module_name = getattr(obj, "__module__", "") or ""
        if module_name.split(".")[0] in VERSIONED_PACKAGES:
            continue
        module = sys.modules.get(module_name)
        files.add(getattr(module, "__file__", None) or f"<{module_name}>")
    if not files:
        return None
    joined = ";".join(f"{path}={_file_digest(path)}" for path in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def spec_fingerprint(spec: str) -> str | None:
    """code_fingerprint of the function a model spec names (None for registered names)."""
    return code_fingerprint([resolve_spec(spec)]) if is_spec(spec) else None
