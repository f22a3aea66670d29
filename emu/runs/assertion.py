"""The assertion language of `[check] assert` and `[check] observe`.

An assertion is checked on every `lpemu_observe(key, value)` of a run. It is
a small expression language, parsed once when the scenario is loaded and
evaluated by a closure per syntax node; nothing reaches Python's eval, and
nothing outside this list is accepted:

    names        key, value, time (integers), task, kind (strings)
    literals     integers, floats, "strings", true/false (True, False)
    arithmetic   + - * / // %  unary - +   & | ^  << >> (shift counts 0..64)
    comparisons  == != < <= > >=  (chains too: 0 <= value < 10)
    membership   x in (1, 2, 3)   x not in ("a", "b")   (literal tuples only)
    boolean      and  or  not     a if c else b
    functions    abs(x)  min(x, y, ...)  max(x, y, ...)

Types are checked at load time (strings compare only with strings, arithmetic
takes numbers), and so are names: `vlaue` is an error naming the file, line
and key, not a failure of every run. An expression is at most MAX_TEXT
characters, MAX_NODES syntax nodes and MAX_DEPTH levels deep, so that neither
parsing nor evaluating it can exhaust the host. A runtime error (a division
by zero) makes the assertion fail on that observation, with the error named.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field

NAMES = {"key": int, "value": int, "time": int, "task": str, "kind": str}
_INT_ONLY = (ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift)
FUNCTIONS = {"abs": (abs, 1, 1), "min": (min, 2, 16), "max": (max, 2, 16)}
MAX_TEXT = 1000
MAX_NODES = 200
MAX_DEPTH = 32
MAX_SHIFT = 64

INT, FLOAT, STR, ANY = "integer", "number", "string", "any"
NUMBERS = (INT, FLOAT)

_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.BitAnd: operator.and_,
          ast.BitOr: operator.or_, ast.BitXor: operator.xor}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
           ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
           ast.Pow: "**", ast.MatMult: "@"}


class AssertionSyntax(ValueError):
    """An expression outside the language; the message says what and where in it."""


@dataclass
class Assertion:
    """One parsed assertion (raises AssertionSyntax when text is outside
    the language). holds(env) evaluates it on one observation, env mapping
    the language's names to their values; an arithmetic error on that
    observation (ZeroDivisionError, a shift count out of range) or a name
    env lacks (KeyError) propagates for the caller to report."""
    text: str
    key: int | None = None             # None: every observation
    line: int = 0
    _fn: object = field(default=None, repr=False, compare=False)
    #: the names (of NAMES) the expression reads: its value depends on nothing else
    names: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if self._fn is None:
            self._fn = compile_expression(self.text)
        self.names = names_read(self.text)

    def __reduce__(self):              # closures do not pickle: parse again where it lands
        return (Assertion, (self.text, self.key, self.line))

    def holds(self, env: dict) -> bool:
        return bool(self._fn(env))


def compile_expression(text: str):
    """The evaluator of text: a function env -> value. Raises AssertionSyntax."""
    if not isinstance(text, str):
        raise AssertionSyntax("an expression is a string")
    if len(text) > MAX_TEXT:
        raise AssertionSyntax(f"{len(text)} characters: an assertion has at most {MAX_TEXT}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise AssertionSyntax(f"not an expression ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise AssertionSyntax(f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    nodes = sum(1 for _ in _walk_bounded(tree.body))
    if nodes > MAX_NODES:
        raise AssertionSyntax(f"{nodes} syntax nodes: an assertion has at most {MAX_NODES}")
    fn, _ = _compile(tree.body, 0)
    return fn


def names_read(text: str) -> frozenset:
    """The names of NAMES that text (an expression compile_expression
    accepts) reads."""
    tree = ast.parse(text.strip(), mode="eval")
    return frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in NAMES)


def _walk_bounded(node, depth=0):
    if depth > MAX_DEPTH:
        raise AssertionSyntax(f"nested too deeply (at most {MAX_DEPTH} levels)")
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _walk_bounded(child, depth + 1)


def _describe(node) -> str:
    try:
        return repr(ast.unparse(node))
    except Exception:                  # noqa: BLE001 - only for the message
        return type(node).__name__


def _literal(node):
    """The value of a literal (number, string, boolean), or raise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and node.value is not None:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise AssertionSyntax(f"{_describe(node)}: `in` takes a tuple of literals, like (1, 2, 3)")


def _type_of(value) -> str:
    return STR if isinstance(value, str) else FLOAT if isinstance(value, float) else INT


def _need(kind: str, want: str, node, what: str) -> None:
    """kind must be want (FLOAT: any number; INT: an integer)."""
    ok = kind == ANY or kind == want or (want == FLOAT and kind == INT)
    if not ok:
        wanted = "an integer" if want == INT else "a string" if want == STR else "a number"
        raise AssertionSyntax(f"{_describe(node)}: {what} takes {wanted}, not a{'n' if kind == INT else ''} {kind}")


def _join(a: str, b: str) -> str:
    """The type of a value that is either an a or a b."""
    if a == b:
        return a
    return FLOAT if a in NUMBERS and b in NUMBERS else ANY


def _compile(node, depth):
    """(function env -> value, static type) of one node."""
    if depth > MAX_DEPTH:
        raise AssertionSyntax(f"nested too deeply (at most {MAX_DEPTH} levels)")
    d = depth + 1
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            return (lambda env: v), INT
        if type(v) in (int, float, str):
            return (lambda env: v), _type_of(v)
        raise AssertionSyntax(f"{_describe(node)}: not a number or string")
    if isinstance(node, ast.Name):
        name = node.id
        if name in ("True", "true"):
            return (lambda env: True), INT
        if name in ("False", "false"):
            return (lambda env: False), INT
        if name not in NAMES:
            raise AssertionSyntax(f"unknown name '{name}' (names: {', '.join(NAMES)})")
        return (lambda env: env[name]), (STR if NAMES[name] is str else INT)
    if isinstance(node, ast.UnaryOp):
        inner, kind = _compile(node.operand, d)
        if isinstance(node.op, ast.Not):
            return (lambda env: not inner(env)), INT
        if isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert)):
            _need(kind, INT if isinstance(node.op, ast.Invert) else FLOAT, node, "a sign")
            op = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}[type(node.op)]
            return (lambda env: op(inner(env))), (INT if kind == INT else FLOAT if kind == FLOAT else ANY)
    if isinstance(node, ast.BinOp):
        left, lk = _compile(node.left, d)
        right, rk = _compile(node.right, d)
        sym = _SYMBOL.get(type(node.op), type(node.op).__name__)
        if isinstance(node.op, (ast.LShift, ast.RShift)):
            _need(lk, INT, node, f"'{sym}'")
            _need(rk, INT, node, f"'{sym}'")
            shift = operator.lshift if isinstance(node.op, ast.LShift) else operator.rshift

            def shifted(env):
                n = right(env)
                if not 0 <= n <= MAX_SHIFT:
                    raise ValueError(f"shift count {n} outside 0..{MAX_SHIFT}")
                return shift(left(env), n)
            return shifted, INT
        op = _ARITH.get(type(node.op))
        if op is None:
            raise AssertionSyntax(f"{_describe(node)}: the operator '{sym}' is not in the language")
        want = INT if isinstance(node.op, _INT_ONLY) else FLOAT
        _need(lk, want, node, f"'{sym}'")
        _need(rk, want, node, f"'{sym}'")
        kind = FLOAT if isinstance(node.op, ast.Div) else _join(lk, rk)
        return (lambda env: op(left(env), right(env))), kind
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, d) for v in node.values]
        fns = [f for f, _ in parts]
        kind = parts[0][1]
        for _, k in parts[1:]:
            kind = _join(kind, k)
        if isinstance(node.op, ast.And):
            def all_of(env):
                v = True
                for f in fns:
                    v = f(env)
                    if not v:
                        return v
                return v
            return all_of, kind

        def any_of(env):
            v = False
            for f in fns:
                v = f(env)
                if v:
                    return v
            return v
        return any_of, kind
    if isinstance(node, ast.Compare):
        return _comparison(node, d), INT
    if isinstance(node, ast.IfExp):
        test, _ = _compile(node.test, d)
        yes, yk = _compile(node.body, d)
        no, nk = _compile(node.orelse, d)
        return (lambda env: yes(env) if test(env) else no(env)), _join(yk, nk)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            _compile(node.func, d)           # names the construct (an attribute, a lambda, ...)
            raise AssertionSyntax(f"{_describe(node.func)}: only abs, min and max can be called")
        if node.func.id not in FUNCTIONS:
            raise AssertionSyntax(f"unknown function '{node.func.id}' (functions: {', '.join(FUNCTIONS)})")
        fn, lo, hi = FUNCTIONS[node.func.id]
        if node.keywords or not lo <= len(node.args) <= hi:
            raise AssertionSyntax(f"{_describe(node)}: {node.func.id} takes "
                                  f"{lo if lo == hi else f'{lo} to {hi}'} argument{'s' if hi > 1 else ''}")
        args = [_compile(a, d) for a in node.args]
        kind = args[0][1]
        for (_, k), a in zip(args, node.args):
            _need(k, FLOAT, a, node.func.id)
            kind = _join(kind, k)
        fns = [f for f, _ in args]
        return (lambda env: fn(*[f(env) for f in fns])), kind
    what = _construct(node)
    raise AssertionSyntax(f"{_describe(node)}: a{'n' if what[0] in 'aeiou' else ''} {what} is not in the "
                          f"language (see [check] assert in the README)")


def _construct(node) -> str:
    return {ast.Attribute: "attribute", ast.Subscript: "subscript", ast.Lambda: "lambda",
            ast.ListComp: "comprehension", ast.GeneratorExp: "comprehension", ast.SetComp: "comprehension",
            ast.DictComp: "comprehension", ast.Dict: "dict", ast.Set: "set", ast.List: "list",
            ast.Tuple: "tuple", ast.NamedExpr: "assignment", ast.JoinedStr: "f-string",
            ast.Starred: "starred expression", ast.Await: "await", ast.Yield: "yield",
            ast.Slice: "slice"}.get(type(node), type(node).__name__)


def _comparison(node: ast.Compare, depth: int):
    first, kind = _compile(node.left, depth)
    if len(node.ops) > 1 and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        raise AssertionSyntax(f"{_describe(node)}: `in` stands alone (write `a in (1, 2) and a < b`)")
    steps = []
    for op, right_node in zip(node.ops, node.comparators):
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(right_node, (ast.Tuple, ast.List, ast.Set)):
                raise AssertionSyntax(f"{_describe(node)}: `in` takes a tuple of literals, like (1, 2, 3)")
            items = [_literal(e) for e in right_node.elts]
            for item in items:
                if kind != ANY and (_type_of(item) == STR) != (kind == STR):
                    raise AssertionSyntax(f"{_describe(node)}: compares a{'' if kind == STR else ' number'}"
                                          f"{' string' if kind == STR else ''} with {item!r}")
            members = frozenset(items)
            negate = isinstance(op, ast.NotIn)
            steps.append((lambda a, b, members=members, negate=negate: (a in members) != negate, None))
            continue
        fn = _COMPARE.get(type(op))
        if fn is None:                       # `is`, `is not`
            raise AssertionSyntax(f"{_describe(node)}: use == or != (`is` is not in the language)")
        right, rk = _compile(right_node, depth)
        if ANY not in (kind, rk) and (STR in (kind, rk)) and kind != rk:
            raise AssertionSyntax(f"{_describe(node)}: compares a string with a number")
        steps.append((fn, right))
        kind = rk

    def compare(env):
        a = first(env)
        for fn, right in steps:
            if right is None:
                if not fn(a, None):
                    return False
                continue
            b = right(env)
            if not fn(a, b):
                return False
            a = b
        return True
    return compare
