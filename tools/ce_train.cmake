ce_tool(ce-train ce_train.cpp)
