"""A simulated CUDA device on the CPU, so that CPU-only CI catches stray CPU tensors.

Why: code meant to run on a GPU must create every tensor on ``params.device`` (or the
context's device). A slip such as ``torch.zeros(n)`` combined with a CUDA tensor raises
only on a GPU machine, and CI has none. Inside ``simulated_cuda()`` such a slip raises on
the CPU as well.

What it simulates: where tensors live. Every tensor is a real CPU tensor; a
``TorchFunctionMode`` sees each torch call and keeps a weak map of the tensors "on the
device" and of those known to be on the CPU (created inside the mode without a device or
with ``device="cpu"``, by ``torch.tensor``/``from_numpy``, ``.cpu()`` or
``.to("cpu")``). Any other tensor (created before the mode, by ``nn.Parameter``, ...) is
unknown and never raises. A call that mixes a device tensor with a CPU tensor raises
``RuntimeError("Expected all tensors to be on the same device ...")`` where CUDA raises:

* allowed as on CUDA: CPU 0-dim tensors as operands of elementwise ops, CPU index tensors
  in ``t[idx]``/``t[idx] = v``/``index_put_``, ``copy_`` across devices, ``.to``/``.cpu``;
* refused as on CUDA: a CPU index in ``index_select``/``gather``/``scatter``/``index_add_``
  and the like (even 0-dim), CPU 0-dim tensors in ``stack``/``cat``, a CPU tensor as the
  target of an in-place op with a device operand, a CPU value in an advanced-index
  assignment, sparse/dense mixes (``torch.sparse.mm``, ``sparse_coo_tensor``), a CPU
  ``torch.Generator`` filling a device tensor, ``.numpy()``/``np.asarray`` of a device
  tensor (``TypeError``).

A device tensor reports ``.device == torch.device("cuda", 0)``, ``.is_cuda`` and
``get_device() == 0``. ``device="cuda"`` (or ``"cuda:K"``, a CUDA ``torch.device``, an
int) in factories, ``new_*``, ``*_like``, ``.to`` and ``.cuda()`` give device tensors;
``with torch.device("cuda"):`` inside the mode works too. Results of a call with a device
input are on the device, results of a call whose inputs are all known CPU tensors are CPU
tensors. ``torch.func`` transforms (``vmap``, ``grad``, ``functional_call``) and autograd
work: functorch's wrapper tensors are looked through to the tensor they wrap, so a
transform's output computed from device tensors comes out on the device.

What it does not simulate: CUDA kernels and their numerics (precision, TF32,
nondeterminism), streams and asynchrony (``non_blocking`` is ignored), memory (no
out-of-memory, no pinned memory: ``pin_memory()`` only copies), several GPUs (every
``cuda:K`` is ``cuda:0``) and the ``torch.cuda`` module (``torch.cuda.is_available()``
stays ``False``; ``torch.cuda.synchronize``, CUDA generators, events and streams fail as
on any CPU build).

Limits: only calls made in the thread that entered the mode are seen (torch's mode stack
is per thread). Calls torch makes from inside a handled call are not seen (the mode is
off while it handles one), nor are calls that bypass ``__torch_function__``
(``nn.Parameter(t)``, ``torch.ops.aten.*``, ``torch.save``). CPU 0-dim operands pass in
any op outside the strict list above, where CUDA takes one per elementwise kernel only.
A ``torch.device("cuda")`` context or ``torch.set_default_device("cuda")`` entered before
the mode fails (it reaches torch before the mode does). Code that picks its device from
``torch.cuda.is_available()`` must be handed ``torch.device("cuda")`` directly. ``repr``
of a device tensor does not print ``device='cuda:0'``; ``t.type()`` says
``torch.FloatTensor``. The rules follow torch's CUDA checks as documented and reported;
they were written without a GPU to compare against. Looking through functorch wrappers
uses ``torch._C._functorch``, a private API.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch._C import _functorch
from torch.overrides import TorchFunctionMode, resolve_name

ON_DEVICE = "cuda"
KNOWN_CPU = "cpu"
DEVICE = torch.device("cuda", 0)

_T = torch.Tensor
_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul")
    + ("and", "or", "xor", "lshift", "rshift")
)
# Ops whose CUDA kernels check every tensor argument's device, CPU 0-dim ones included.
_STRICT = frozenset(
    ("index_select", "gather", "take", "take_along_dim", "put", "put_", "stack", "hstack")
    + ("vstack", "dstack", "column_stack", "cat", "concat", "concatenate", "index_add")
    + ("index_add_", "index_copy", "index_copy_", "index_reduce", "index_reduce_")
    + ("scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce")
    + ("scatter_reduce_",)
)
_DATA_LISTS = frozenset((torch.tensor, torch.as_tensor, torch.asarray))
_INDEXING = frozenset(
    (_T.__getitem__, _T.__setitem__, _T.index_put_, _T.index_put, torch.index_put)
    + (torch.index_put_,)
)
_ACTIVE: list[SimulatedCuda] = []


class SimulatedCuda(TorchFunctionMode):
    """The mode behind ``simulated_cuda()``; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._placement = _Placements()
        self._handlers = {
            _T.device.__get__: self._device,
            _T.is_cuda.__get__: lambda f, a, k: self._real_unless_on(f, a, k, True),
            _T.is_cpu.__get__: lambda f, a, k: self._real_unless_on(f, a, k, False),
            _T.get_device: lambda f, a, k: self._real_unless_on(f, a, k, 0),
            _T.numpy: self._numpy,
            _T.__array__: self._numpy,
            _T.to: self._to,
            _T.type_as: self._to,
            _T.cuda: self._cuda,
            _T.cpu: self._cpu,
            _T.pin_memory: self._pin_memory,
            _T.copy_: _plain,
            _T.tolist: _plain,
            _T.item: _plain,
            _T.data.__set__: self._set_data,
            _T.__iter__: self._iter,
        }

    def __enter__(self) -> SimulatedCuda:
        if _ACTIVE:
            raise RuntimeError("simulated_cuda() does not nest")
        super().__enter__()
        _ACTIVE.append(self)
        self._from_numpy = torch.from_numpy  # takes an array: the mode never sees it
        torch.from_numpy = lambda array: self._mark(self._from_numpy(array), KNOWN_CPU)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.from_numpy = self._from_numpy
        _ACTIVE.remove(self)
        super().__exit__(*exc)

    def placement(self, tensor: torch.Tensor) -> str | None:
        """``ON_DEVICE``, ``KNOWN_CPU`` or ``None`` (unknown) for ``tensor``, looking
        through functorch wrappers to the tensor they wrap."""
        placement = self._placement.get(tensor)
        if placement is None and _functorch.is_functorch_wrapped_tensor(tensor):
            placement = self._placement.get(_unwrapped(tensor))
        return placement

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self._handlers.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        if "device" in kwargs:
            return self._factory(func, args, kwargs)
        if func in _DATA_LISTS and args and not isinstance(args[0], torch.Tensor):
            return self._mark(func(*args, **kwargs), KNOWN_CPU)
        return self._call(func, args, kwargs)

    def _call(self, func, args: tuple, kwargs: dict) -> Any:
        """Check the devices of ``func``'s tensors, call it and place its results."""
        tensors = _tensors(args, kwargs)
        places = [self.placement(t) for t in tensors]
        on_device = ON_DEVICE in places
        _check_generator(func, kwargs, on_device)
        if on_device and KNOWN_CPU in places:
            self._check_mix(func, args, kwargs, tensors, places)
        result = func(*args, **kwargs)
        if on_device:
            return self._mark(result, ON_DEVICE)
        if all(p == KNOWN_CPU for p in places):
            return self._mark(result, KNOWN_CPU)
        return result

    def _check_mix(self, func, args: tuple, kwargs: dict, tensors: list, places: list) -> None:
        """Raise where CUDA refuses the CPU tensors among device ones."""
        if func in _INDEXING:
            self._check_indexing(func, args, kwargs)
            return
        name = getattr(func, "__name__", "")
        strict = name in _STRICT
        target = args[0] if args and _is_inplace(name) else kwargs.get("out")
        for tensor, place in zip(tensors, places):
            if place == KNOWN_CPU and (strict or tensor is target or _dim(tensor) > 0):
                _raise_mix(func, tensor)

    def _check_indexing(self, func, args: tuple, kwargs: dict) -> None:
        """CPU indices are fine; a CPU indexed tensor with device indices or a CPU value
        written into a device tensor through advanced indexing is not."""
        indexed, index = args[0], args[1]
        value = args[2] if len(args) > 2 else kwargs.get("values")
        on_device = self.placement(indexed) == ON_DEVICE
        if not on_device and ON_DEVICE in map(self.placement, _tensors(index)):
            raise RuntimeError(
                "indices should be either on cpu or on the same device as the indexed "
                f"tensor (cpu) (simulated cuda: {_name(func)})"
            )
        if value is None or (func == _T.__setitem__ and not _advanced(index)):
            return
        if not isinstance(value, torch.Tensor) or self.placement(value) is None:
            return
        if on_device and self.placement(value) == KNOWN_CPU and _dim(value) > 0:
            _raise_mix(func, value)
        if self.placement(indexed) == KNOWN_CPU and self.placement(value) == ON_DEVICE:
            _raise_mix(func, indexed)

    def _factory(self, func, args: tuple, kwargs: dict) -> Any:
        """A call with ``device=``: made on the CPU, its result placed on that device."""
        kind = _device_type(kwargs["device"])
        if kind is None:
            return self._call(func, args, {k: v for k, v in kwargs.items() if k != "device"})
        if kind not in (ON_DEVICE, KNOWN_CPU):
            return func(*args, **kwargs)
        _check_generator(func, kwargs, kind == ON_DEVICE)
        result = func(*args, **{**kwargs, "device": "cpu"})
        if args and result is args[0]:  # torch.as_tensor(t, device=...) without a copy
            return self._move(args[0], result, kind)
        return self._mark(result, kind, force=True)

    def _to(self, func, args: tuple, kwargs: dict) -> Any:
        """``Tensor.to`` and ``type_as``: a copy moves, a no-op keeps the placement."""
        tensor, rest = args[0], args[1:]
        kind, rest, kwargs = self._to_target(rest, kwargs)
        if kind is None:
            return self._call(func, args, kwargs)
        return self._move(tensor, func(tensor, *rest, **kwargs), kind)

    def _to_target(self, rest: tuple, kwargs: dict) -> tuple[str | None, tuple, dict]:
        """The placement ``.to(*rest, **kwargs)`` asks for, and the arguments to make the
        call on the CPU."""
        if "device" in kwargs:
            kind = _device_type(kwargs["device"])
            return kind, rest, ({**kwargs, "device": "cpu"} if kind == ON_DEVICE else kwargs)
        if rest and isinstance(rest[0], torch.Tensor):
            return self.placement(rest[0]), rest, kwargs
        if rest and isinstance(rest[0], (str, torch.device, int)):
            kind = _device_type(rest[0])
            return kind, (("cpu", *rest[1:]) if kind == ON_DEVICE else rest), kwargs
        return None, rest, kwargs

    def _move(self, tensor: torch.Tensor, result: torch.Tensor, kind: str) -> torch.Tensor:
        """``result`` of moving ``tensor`` to ``kind``: a new tensor when it moves."""
        if kind not in (ON_DEVICE, KNOWN_CPU):
            return result
        place = self.placement(tensor)
        if result is tensor and place != kind:
            if place is None and kind == KNOWN_CPU:
                return result
            result = tensor.clone()
        return self._mark(result, kind, force=result is not tensor)

    def _cuda(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        return self._move(args[0], args[0], ON_DEVICE)

    def _cpu(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        return self._move(args[0], func(*args, **kwargs), KNOWN_CPU)

    def _pin_memory(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        if self.placement(args[0]) == ON_DEVICE:
            raise RuntimeError(
                "cannot pin 'torch.cuda.FloatTensor' only dense CPU tensors can be pinned "
                "(simulated cuda)"
            )
        return self._mark(args[0].clone(), KNOWN_CPU)

    def _device(self, func, args: tuple, kwargs: dict) -> torch.device:
        return DEVICE if self.placement(args[0]) == ON_DEVICE else func(*args, **kwargs)

    def _real_unless_on(self, func, args: tuple, kwargs: dict, on_device: Any) -> Any:
        return on_device if self.placement(args[0]) == ON_DEVICE else func(*args, **kwargs)

    def _numpy(self, func, args: tuple, kwargs: dict) -> Any:
        if self.placement(args[0]) == ON_DEVICE and not kwargs.get("force", False):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to "
                "copy the tensor to host memory first. (simulated cuda)"
            )
        return func(*args, **kwargs)

    def _iter(self, func, args: tuple, kwargs: dict) -> Any:
        """``for row in t``: the rows are where ``t`` is."""
        rows = tuple(func(*args, **kwargs))
        place = self.placement(args[0])
        return iter(rows if place is None else self._mark(rows, place))

    def _set_data(self, func, args: tuple, kwargs: dict) -> None:
        """``t.data = other`` moves ``t`` to where ``other`` is."""
        tensor, data = args
        func(*args, **kwargs)
        place = self.placement(data)
        if place is None:
            self._placement.forget(tensor)
        else:
            self._placement.set(tensor, place)

    def _mark(self, result: Any, place: str, force: bool = False) -> Any:
        """Place every tensor of ``result`` not placed yet (all of them when ``force``),
        and the tensor a functorch wrapper wraps."""
        for tensor in _tensors(result):
            if force or self._placement.get(tensor) is None:
                self._placement.set(tensor, place)
            if _functorch.is_functorch_wrapped_tensor(tensor):
                base = _unwrapped(tensor)
                if self._placement.get(base) is None:
                    self._placement.set(base, place)
        return result


def simulated_cuda() -> SimulatedCuda:
    """A context manager in which ``"cuda"`` means a simulated device on the CPU:
    ``with simulated_cuda(): ...``."""
    return SimulatedCuda()


def to_simulated(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the simulated device (inside ``simulated_cuda()`` only)."""
    if not _ACTIVE:
        raise RuntimeError("to_simulated needs an active simulated_cuda()")
    return tensor.to(DEVICE)


class _Ref(weakref.ref):
    __slots__ = ("key",)


class _Placements:
    """Placements of tensors by identity; an entry goes when its tensor dies."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[_Ref, str]] = {}

    def get(self, tensor: torch.Tensor) -> str | None:
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def set(self, tensor: torch.Tensor, place: str) -> None:
        ref = _Ref(tensor, self._drop)
        ref.key = id(tensor)
        self._entries[ref.key] = (ref, place)

    def forget(self, tensor: torch.Tensor) -> None:
        if self.get(tensor) is not None:
            del self._entries[id(tensor)]

    def _drop(self, ref: _Ref) -> None:
        entry = self._entries.get(ref.key)
        if entry is not None and entry[0] is ref:
            del self._entries[ref.key]


def _tensors(*objs: Any) -> list[torch.Tensor]:
    """The tensors in ``objs``, looking into lists, tuples and dicts."""
    found, pending = [], list(objs)
    while pending:
        obj = pending.pop()
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            pending.extend(obj)
        elif isinstance(obj, dict):
            pending.extend(obj.values())
    return found


def _unwrapped(tensor: torch.Tensor) -> torch.Tensor:
    """The plain tensor under functorch's wrappers (batching, grad tracking)."""
    while _functorch.is_functorch_wrapped_tensor(tensor):
        tensor = _functorch.get_unwrapped(tensor)
    return tensor


def _dim(tensor: torch.Tensor) -> int:
    """The number of dimensions of the tensor the kernel sees (under any wrapper)."""
    return _unwrapped(tensor).dim()


def _device_type(spec: Any) -> str | None:
    """``"cuda"``, ``"cpu"``, another type or ``None`` for a ``device=`` argument (an
    int is a CUDA ordinal, as in torch)."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return ON_DEVICE
    return torch.device(spec).type


def _is_inplace(name: str) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS


def _advanced(index: Any) -> bool:
    """Whether ``t[index]`` is advanced indexing (tensors, lists or arrays in it)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


def _check_generator(func, kwargs: dict, on_device: bool) -> None:
    """A CPU ``torch.Generator`` cannot draw device numbers on CUDA."""
    generator = kwargs.get("generator")
    if on_device and generator is not None and generator.device.type == "cpu":
        raise RuntimeError(
            "Expected a 'cuda' device type for generator but found 'cpu' (simulated cuda: "
            f"{_name(func)})"
        )


def _raise_mix(func, cpu_tensor: torch.Tensor) -> None:
    raise RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, "
        f"cuda:0 and cpu! (simulated cuda: {_name(func)} got a CPU tensor "
        f"of shape {tuple(cpu_tensor.shape)})"
    )


def _plain(func, args: tuple, kwargs: dict) -> Any:
    """A call that neither mixes devices nor returns tensors to place."""
    return func(*args, **kwargs)


def _name(func) -> str:
    return resolve_name(func) or getattr(func, "__qualname__", repr(func))
