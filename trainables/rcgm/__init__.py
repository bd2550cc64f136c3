"""The method layer (torch only): RCGM objective, MeanFlow baseline, target model, schedules, sampler.

Import from the modules themselves (`trainables.rcgm.objective`, `.registry`, `.target`, ...): this
package file stays empty so that the torch-free ones (`errors`, `checks`) import without torch.
"""
