"""Typed syntax tree of a `.opt` spec. Every node keeps its source position for error messages.

Expression nodes carry two annotations that the checker fills in:
`kind` ("host": depends only on hyperparameters, `step` and the tensor's shape; "uniform": one
device value per tensor; "row" / "col": one per row / column; "element": per tensor element) and
`type` ("num" or "bool").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .errors import Position

HOST = "host"  # hyperparameters, step, shape values: Python floats on the host
UNIFORM = "uniform"  # one value per tensor on the device: per-tensor and global reductions, `loss`
ROW = "row"  # one value per row of the (shape[0], rest) view
COL = "col"  # one value per column of that view
ELEMENT = "element"
SCALAR = "scalar"  # the declared shape of a state holding one value per tensor
DEVICE_KINDS = (UNIFORM, ROW, COL, ELEMENT)


def join_kinds(*kinds) -> str:
    """The kind of a value computed from values of these kinds (row with column is per element)."""
    found = set(kinds)
    if ELEMENT in found or (ROW in found and COL in found):
        return ELEMENT
    for kind in (ROW, COL, UNIFORM):
        if kind in found:
            return kind
    return HOST


@dataclass(eq=False)
class Expr:
    pos: Position
    kind: Optional[str] = field(default=None, init=False, repr=False)
    type: Optional[str] = field(default=None, init=False, repr=False)


@dataclass(eq=False)
class Number(Expr):
    value: float
    text: str


@dataclass(eq=False)
class Bool(Expr):
    value: bool


@dataclass(eq=False)
class Name(Expr):
    id: str


@dataclass(eq=False)
class Unary(Expr):
    op: str  # "-", "+" or "not"
    operand: Expr


@dataclass(eq=False)
class Binary(Expr):
    op: str  # + - * / ^ and or
    left: Expr
    right: Expr


@dataclass(eq=False)
class Compare(Expr):
    """A comparison chain: `0 <= beta < 1` holds operands [0, beta, 1] and ops ["<=", "<"]."""

    ops: list[str]
    operands: list[Expr]


@dataclass(eq=False)
class Call(Expr):
    func: str
    args: list[Expr]


@dataclass(eq=False)
class Assign:
    pos: Position
    target: str
    value: Expr


@dataclass(eq=False)
class If:
    """`if c1 {..} elif c2 {..} else {..}`: branches are (condition, body) pairs."""

    pos: Position
    branches: list[tuple[Expr, list["Statement"]]]
    orelse: list["Statement"]


Statement = Union[Assign, If]

HyperValue = Union[float, bool, None, tuple]  # None: `none`, unset until the user gives a number


@dataclass(eq=False)
class Hyper:
    pos: Position
    name: str
    default: HyperValue
    components: Optional[tuple[str, ...]]  # names bound by `as (a, b)` for a tuple default
    constraint: Optional[Expr]

    @property
    def scalar_names(self) -> tuple[str, ...]:
        """The names the update rule sees: the components of a tuple, else the name itself."""
        return self.components if self.components else (self.name,)

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def unset_names(self) -> tuple[str, ...]:
        """The scalars that default to `none` (a component of a tuple, or the hyperparameter)."""
        defaults = self.default if self.components else (self.default,)
        return tuple(name for name, value in zip(self.scalar_names, defaults) if value is None)


def none_flag(name: str) -> str:
    """The host flag that `name == none` reads: whether an unset hyperparameter was left unset."""
    return f"{name}_is_none"


@dataclass(eq=False)
class State:
    pos: Position
    name: str
    dtype: Optional[str]
    init: Expr
    shape: str = ELEMENT  # ELEMENT, ROW, COL or SCALAR


@dataclass(eq=False)
class FuncDef:
    pos: Position
    name: str
    params: list[str]
    body: Expr
    path: str = "<spec>"
    source: str = ""


@dataclass(eq=False)
class Import:
    pos: Position
    path: str


@dataclass(eq=False)
class Spec:
    name: str
    name_pos: Position
    doc: str
    hypers: list[Hyper]
    states: list[State]
    funcs: list[FuncDef]
    imports: list[Import]
    body: list[Statement]
    body_pos: Optional[Position]
    path: str = "<spec>"
    source: str = ""


# -- loss rules (docs/language.md, "Loss rules") ------------------------------------------------


@dataclass(eq=False)
class LossInput:
    """`input name: role [= default] [differentiable]`: one tensor argument of the loss."""

    pos: Position
    name: str
    role: str
    role_pos: Position
    default: Optional[float]  # value used when the argument is None; None: a required argument
    differentiable: bool


@dataclass(eq=False)
class LossSpec:
    """A `loss Name` spec. It has the fields of `Spec` that the parser's checks read (`states` is
    always empty), plus its inputs and default reduction; `body` is the `value` block."""

    name: str
    name_pos: Position
    doc: str
    hypers: list[Hyper]
    funcs: list[FuncDef]
    imports: list[Import]
    inputs: list[LossInput]
    reduction: Optional[str]
    reduction_pos: Optional[Position]
    # Position of `reduction` among the hyperparameters and optional inputs (constructor order):
    # every item in declaration order, as ("input" | "hyper" | "reduction", name).
    order: list[tuple[str, str]]
    body: list[Statement]
    body_pos: Optional[Position]
    path: str = "<spec>"
    source: str = ""
    states: list = field(default_factory=list)
