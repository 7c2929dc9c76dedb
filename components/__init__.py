"""Pipeline steps: each module has a typed core function, a CLI entry and a KFP wrapper."""
