ce_tool(ce-eval ce_eval.cpp)
# Lets ce-eval find scripts/plot-eval.py when it is not run from the repository root.
target_compile_definitions(ce-eval PRIVATE CE_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
