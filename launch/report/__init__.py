"""Reports of a finished run: analyze, compare, plots, Gantt charts, TensorBoard, worker usage. Reads run folders;
imports nothing of run/ or backends/."""
