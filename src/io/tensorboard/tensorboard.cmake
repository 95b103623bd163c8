# Owns the moe_tb library (src/io/tensorboard: TensorBoard event files, DESIGN §6 log.tensorboard) and its generated
# protobuf code; included from the top-level CMakeLists.txt. Protobuf headers are seen only by event_writer.cpp
# (and tests that decode records), ISA-L only by record_framing.cpp.
find_package(Protobuf REQUIRED)  # CMake's FindProtobuf: protobuf::libprotobuf, protobuf_generate
find_path(ISAL_INCLUDE_DIR isa-l/crc.h)
find_library(ISAL_LIBRARY isal)
if(NOT ISAL_INCLUDE_DIR OR NOT ISAL_LIBRARY)
  message(FATAL_ERROR "moe-train needs Intel ISA-L (libisal-dev) for the CRC-32C of TensorBoard event files")
endif()

# tb_event.proto -> <build>/proto/io/tensorboard/tb_event.pb.{h,cc}, included as "io/tensorboard/tb_event.pb.h".
# APPEND_PATH: protoc's import root is this directory, so the outputs land directly in PROTOC_OUT_DIR.
set(MOE_TB_PROTO_OUT ${CMAKE_BINARY_DIR}/proto/io/tensorboard)
file(MAKE_DIRECTORY ${MOE_TB_PROTO_OUT})
add_library(moe_tb_proto STATIC)
protobuf_generate(TARGET moe_tb_proto LANGUAGE cpp APPEND_PATH
                  PROTOS ${CMAKE_CURRENT_LIST_DIR}/tb_event.proto
                  PROTOC_OUT_DIR ${MOE_TB_PROTO_OUT})
target_include_directories(moe_tb_proto PUBLIC ${CMAKE_BINARY_DIR}/proto)
target_link_libraries(moe_tb_proto PUBLIC protobuf::libprotobuf)

add_library(moe_tb STATIC ${CMAKE_CURRENT_LIST_DIR}/event_writer.cpp ${CMAKE_CURRENT_LIST_DIR}/record_framing.cpp)
target_include_directories(moe_tb PUBLIC ${CMAKE_SOURCE_DIR}/src)
target_link_libraries(moe_tb PRIVATE moe_tb_proto ${ISAL_LIBRARY})
if(NOT ISAL_INCLUDE_DIR IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)  # -I/usr/include would break <cstdlib>
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/record_framing.cpp PROPERTIES
                              INCLUDE_DIRECTORIES "${ISAL_INCLUDE_DIR}")
endif()
