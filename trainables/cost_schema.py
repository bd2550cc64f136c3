"""The MLflow names of a trial's cost, in one place: trainables.cost and rank0 write them, the dashboards read them.

Standard library only, so the torch-free dashboards can import it.
"""

# Counted once per trial, logged at its first step (0, or the step it resumed from).
FORWARD_FLOPS = "cost_forward_flops"
FLOPS_PER_STEP = "cost_flops_per_step"
FORWARD_EQUIVALENTS = "cost_forward_equivalents"
SAVED_ACTIVATIONS_MB = "cost_saved_activations_mb"  # CPU only: CUDA has a real peak

# Throughput: per evaluation window under these names, over the whole trial with TRIAL_PREFIX.
STEPS_PER_S = "steps_per_s"
SAMPLES_PER_S = "samples_per_s"
TFLOPS_PER_S = "tflops_per_s"
MFU = "mfu"  # GPUs with a known peak only
PEAK_MEMORY_MB = "peak_memory_mb"  # CUDA only
TRIAL_PREFIX = "cost_"

# Whole-trial totals, at the end.
TOTAL_FLOPS = "cost_total_flops"
TRAIN_TIME_S = "cost_train_time_s"

TRIAL_STEPS_PER_S, TRIAL_SAMPLES_PER_S, TRIAL_TFLOPS_PER_S, TRIAL_MFU, TRIAL_PEAK_MEMORY_MB = (
    TRIAL_PREFIX + name for name in (STEPS_PER_S, SAMPLES_PER_S, TFLOPS_PER_S, MFU, PEAK_MEMORY_MB))

# The run-level metrics the report reads (the last value of each).
SUMMARY_METRICS = (FORWARD_FLOPS, FLOPS_PER_STEP, FORWARD_EQUIVALENTS, TOTAL_FLOPS, TRIAL_STEPS_PER_S,
                   TRIAL_SAMPLES_PER_S, TRIAL_TFLOPS_PER_S, TRAIN_TIME_S, TRIAL_MFU, TRIAL_PEAK_MEMORY_MB,
                   SAVED_ACTIVATIONS_MB)

# How the steps ran: trial-table column -> run tag.
RUN_TAGS = {"precision": "rcgm.precision", "attention": "rcgm.attention", "compile": "rcgm.compile",
            "device": "rcgm.device", "peak_tflops": "rcgm.peak_tflops"}
