"""One public function per command: config dataclass + progress in, result dataclass out; never prints."""
