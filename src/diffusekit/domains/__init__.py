"""Application domains built on the core: time series (``domains.timeseries``) and control (``domains.control``).

Each domain owns its data (generated or bundled with a package, never downloaded), its evaluation and its CLI
command; the diffusion parts go through the same core (schedules, denoisers, samplers, Trainer) as images.
"""
