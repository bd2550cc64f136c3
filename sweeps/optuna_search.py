"""Optuna TPE search with ASHA early stopping, for continuous spaces (schedules, lr, guidance)."""

from __future__ import annotations


def optuna_param_space(space: dict) -> dict:
    """Tune distributions for name -> (low, high, log)."""
    from ray import tune

    return {name: (tune.loguniform(low, high) if log else tune.uniform(low, high)) for name, (low, high, log) in space.items()}


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
