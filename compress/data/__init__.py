"""The data side: task specs (`tasks`), reading local files (`files`), GLUE sources, slicing and
tokenising (`sources`), batching (`batching`), a recipe's data ready for training (`task_data`)
and the GLUE metrics (`metrics`)."""
