"""pvq: pyramid vector quantization (and honest baselines) for large language models."""

__version__ = "0.1.0"


def _install_transformers_hook() -> None:
    """Register the ``pvq`` quantizer with transformers when its quantizer registry loads.

    Why a hook: ``from_pretrained`` on a pvq checkpoint must work after a
    plain ``import pvq``, and transformers offers no plugin entry point for
    quantizers; registering eagerly would make every ``import pvq`` import
    ``transformers.quantizers.auto`` (about 1.2 s on the CI machine, on top of
    torch), also for the codec-only uses (``pvq rd``). So: if that module is
    already imported, register now; otherwise a meta-path hook imports
    :mod:`pvq.models.hf_quantizer` (which registers on import) right after it
    executes. Importing :mod:`pvq.models.hf_quantizer` directly registers too.
    """
    import sys

    def register() -> None:
        try:
            import pvq.kernels  # noqa: F401  (registers the kernel backends)
            import pvq.models.hf_quantizer  # noqa: F401  (registers on import)
        except Exception as e:  # never break the transformers import
            import warnings

            warnings.warn(f"pvq could not register its transformers quantizer: {e}", stacklevel=2)

    target = "transformers.quantizers.auto"
    if target in sys.modules:
        register()
        return

    import importlib.abc

    class _Loader(importlib.abc.Loader):
        def __init__(self, loader):
            self.loader = loader

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            self.loader.exec_module(module)
            register()

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target_module=None):
            if fullname != target:
                return None
            sys.meta_path.remove(self)
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target_module) if find else None
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _Loader(spec.loader)
                    return spec
            return None

    if not any(type(f).__name__ == "_Finder" and getattr(f, "_pvq", False) for f in sys.meta_path):
        finder = _Finder()
        finder._pvq = True
        sys.meta_path.insert(0, finder)


_install_transformers_hook()
