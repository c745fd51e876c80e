"""Weight files without Lightning: one reader for every format, conversion, pretrained init."""
