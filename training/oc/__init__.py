"""The OC phase of training: the N trajectory optimisations in worker processes or on Ray (phase),
and PLAL's consensus terms inside the OCP (consensus)."""
