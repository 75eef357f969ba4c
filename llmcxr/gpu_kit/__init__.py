"""One-shot GPU training kit: pack on a CPU, drive one short GPU window, unpack what comes back.

A GPU window (see ``docs/gpu_training.md``) takes commands of bounded size and returns at most a
few bounded files, so the kit moves everything as checked parts:

- `llmcxr.gpu_kit.pack` (CPU) writes an ignored bundle folder: the payload (wheels, the base LLM,
  the instruction data with its image-token cache, packed images) cut into parts that fit one
  command each, and the exact commands to send them;
- `llmcxr.gpu_kit.driver` (GPU machine) joins and checks the parts, installs the wheels and
  trains in priority order, each phase under its own deadline, writing each result to ``$OUT``
  the moment it exists (`llmcxr.gpu_kit.outbox`);
- `llmcxr.gpu_kit.unpack` (CPU) turns the returned files into a model folder and the rest.

The modules the GPU machine runs before its wheels are installed (``parts``, ``outbox``,
``limits``, ``driver``) use the standard library only.
"""
