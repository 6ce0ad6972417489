"""Pure codecs, one module per binary format; each docstring carries its byte layout. No I/O here."""
