"""HTTP routes beyond signaling and what every route shares: typed dependencies (`deps`), the
JSON error shape (`errors`), the request-body cap (`middleware`), what an offer asks for
(`offers`) and the catalog of models, sources and ICE servers (`catalog`)."""
