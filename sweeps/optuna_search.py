"""Optuna TPE search with ASHA early stopping, over real and integer settings (schedules, lr, guidance, order, kappa)."""

from __future__ import annotations


def optuna_param_space(space: dict) -> dict:
    """Tune distributions for name -> sweeps.spaces.Param (both ends included)."""
    from ray import tune

    def domain(param):
        if param.kind is int:
            # Tune's randint / lograndint exclude the upper end (OptunaSearch asks Optuna for upper - 1).
            sample = tune.lograndint if param.log else tune.randint
            return sample(int(param.low), int(param.high) + 1)
        return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)

    return {name: domain(param) for name, param in space.items()}


def optuna_tune_config(plan, max_concurrent: int, naming: dict):
    """TuneConfig with a seeded TPE sampler (study kept in a database) and ASHA on the training step.

    naming: Tune's trial_name_creator / trial_dirname_creator, as for grids.
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    metric = plan.base.metric_names()[0]
    search = OptunaSearch(
        metric=metric, mode="min", sampler=optuna.samplers.TPESampler(seed=plan.base.seed),
        study_name=plan.name, storage=optuna.storages.RDBStorage(plan.optuna_storage) if plan.optuna_storage else None,
    )
    # ASHA compares trials at the same training step (time_attr), so collapsing ones stop early.
    scheduler = ASHAScheduler(time_attr="step", metric=metric, mode="min", max_t=plan.base.steps,
                              grace_period=max(plan.base.eval_every, plan.base.steps // 4), reduction_factor=2)
    return tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=plan.num_samples, max_concurrent_trials=max_concurrent,
                           reuse_actors=plan.inline, **naming)
