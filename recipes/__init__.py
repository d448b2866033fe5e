"""Run recipes (YAML configs, DeepSpeed JSONs, launch scripts), installed with the package as
`vidlm.recipes` so that `vidlm demo` finds them wherever vidlm is installed. See README.md here."""
