# Owns the router-health test registration (label cpu): per-layer metrics, churn and MFU of a real run.
add_test(NAME health.router_metrics COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/router_metrics.sh $<TARGET_FILE:moe-train>)
set_tests_properties(health.router_metrics PROPERTIES LABELS cpu TIMEOUT 300)
