"""CEL policy conditions: a parser and a static type checker, run when the config is loaded.

Evaluation is left to the `common-expression-language` package; this package makes sure, before a
condition is ever evaluated, that it only reads declared fields and only calls what the evaluator has.
"""

from gateway.cel.checker import CelError, CelProblem, Checked, FieldPath, check
from gateway.cel.syntax import (
    Call,
    CelSyntaxError,
    Comprehension,
    CreateList,
    CreateMap,
    Expr,
    Ident,
    Index,
    Literal,
    Select,
    parse,
    unparse,
)
from gateway.cel.types import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    ListType,
    MapType,
    RecordType,
)

__all__ = [
    "BOOL",
    "BYTES",
    "DOUBLE",
    "DURATION",
    "DYN",
    "INT",
    "NULL",
    "STRING",
    "TIMESTAMP",
    "TYPE",
    "UINT",
    "Call",
    "CelError",
    "CelProblem",
    "CelSyntaxError",
    "CelType",
    "Checked",
    "Comprehension",
    "CreateList",
    "CreateMap",
    "Expr",
    "FieldPath",
    "Ident",
    "Index",
    "ListType",
    "Literal",
    "MapType",
    "RecordType",
    "Select",
    "check",
    "parse",
    "unparse",
]
