"""Configuration glue: the config schema, its validation, and the tables that map a config
to models, objectives and samplers.

Import the submodules directly (`jaxdiff.config.schema`, `.validation`, `.builders`,
`.objectives`, `.sampling`): this package imports none of them, so that a config file,
which imports only `jaxdiff.config.schema`, stays cheap to load.
"""
