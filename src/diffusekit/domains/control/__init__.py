"""Decision making with diffusion models: gymnasium environments we own, diffusion policies and planners.

* chunk policies on scripted demonstrations (``registry.POLICY_METHODS``: ``mse``, ``diffusion`` = Diffusion
  Policy, ``mode`` = MoDE) for ``envs_point`` (bimodal point-mass navigation) and ``envs_pusht`` (pymunk block
  pushing), with receding-horizon ``rollout``;
* planners with their own data (``planners.PLANNER_ENVS``): Diffuser, Trajectory Diffuser and its autoregressive
  generator on the maze (``maze_env``, ``maze_data``, ``planner_api``), DiffusionDrive on toy driving scenes
  (``drive_env``, ``drive_anchors.cluster_anchors``, ``drive_diffusion``, ``drive_eval``).

All reachable from ``diffusekit policy train|eval``. Import the submodules directly (gymnasium and pymunk are
imported only by the environments that need them).
"""
