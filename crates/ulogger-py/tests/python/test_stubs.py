"""The type stubs (PEP 561) cover every public name, and every public
name has a docstring."""

import ast
import importlib
import inspect
import os
import unittest

MODULES = [
    "ulogger_cloud",
    "ulogger_cloud.api",
    "ulogger_cloud.mqtt",
    "ulogger_cloud.telemetry",
    "ulogger_cloud.checksum",
    "ulogger_cloud.session_store",
    "ulogger_cloud.device_info",
    "ulogger_cloud.bridge",
    "ulogger_cloud.client",
    "ulogger_cloud.aio",
    "ulogger_cloud.errors",
]


def stub_of(module):
    path = module.__file__
    path = os.path.join(os.path.dirname(path), "__init__.pyi") if path.endswith("__init__.py") \
        else path[: -len(".py")] + ".pyi"
    with open(path) as fh:
        return ast.parse(fh.read(), filename=path)


def defined(tree):
    """Names a stub defines at top level, and the methods of its classes."""
    names, methods, declared_all = set(), {}, None
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            methods[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__all__":
                        declared_all = ast.literal_eval(node.value)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names, methods, declared_all


def public_methods(cls):
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


class Stubs(unittest.TestCase):
    def test_the_package_is_typed(self):
        import ulogger_cloud

        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(ulogger_cloud.__file__), "py.typed")))

    def test_every_name_of_every_all_is_in_its_stub(self):
        for name in MODULES:
            module = importlib.import_module(name)
            names, methods, declared_all = defined(stub_of(module))
            with self.subTest(module=name):
                self.assertEqual(declared_all, list(module.__all__))
                self.assertEqual(set(module.__all__) - names, set())
                for public in module.__all__:
                    value = getattr(module, public)
                    if inspect.isclass(value) and public in methods and value.__module__ == name:
                        missing = public_methods(value) - methods[public]
                        self.assertEqual(missing, set(), "%s.%s" % (name, public))

    def test_every_public_name_has_a_docstring(self):
        for name in MODULES:
            module = importlib.import_module(name)
            self.assertTrue(inspect.getdoc(module), name)
            for public in module.__all__:
                value = getattr(module, public)
                if not (inspect.isclass(value) or inspect.isfunction(value)):
                    continue
                with self.subTest(name="%s.%s" % (name, public)):
                    self.assertTrue(inspect.getdoc(value))
                    if inspect.isclass(value) and value.__module__ == name:
                        for method in public_methods(value):
                            self.assertTrue(
                                inspect.getdoc(getattr(value, method)), "%s.%s" % (public, method)
                            )
