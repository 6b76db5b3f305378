"""One public function per command: config dataclass + progress in, result dataclass out; never prints.

A command whose pipeline has parts is a package named after it (``evaluate/``, ``compare/``)."""
