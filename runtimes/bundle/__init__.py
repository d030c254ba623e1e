"""The bundle format: its layout, manifest, ownership rules and verified opening, in one place."""
