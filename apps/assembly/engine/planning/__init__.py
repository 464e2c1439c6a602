"""The merge planner's stages, one module each; `apps.assembly.engine.plan.make_plan` runs
them in order over one shared `PlanContext` (context.py):

- parameters.py: the merge method, its parameters checked before any model is read, and
  resolved per output tensor afterwards;
- inputs.py: the models and `model+lora` adapters, read from their headers, and their roles;
- layers.py: the slices, and the output tensors they make (before, in and after the blocks,
  the LM head), what each input tensor left out is dropped for, shapes and dtypes;
- vocabulary.py: tied embeddings, the output vocabulary and tokenizer;
- config.py: the output config.json;
- grafts.py: components taken whole from a donor model;
- estimate.py: the accounting of every input tensor, and the disk, memory and time estimate;
- errors.py: the PlanError family; result.py: the Plan and what it holds.
"""
