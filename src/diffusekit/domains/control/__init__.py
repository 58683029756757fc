"""Decision making with diffusion models: gymnasium environments we own, diffusion policies and planners."""
