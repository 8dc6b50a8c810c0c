"""Every touch of a library's private internals lives here, with a start-up self-check
(`compat.aiortc.self_check`) that stops the service with one line if an internal is gone."""
