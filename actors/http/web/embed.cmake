# Compiles the web page into the binary: writes OUT, a C++ source defining ce::web_page_html()
# as IN's bytes in a raw string literal. Run by actors/CMakeLists.txt's custom command:
#   cmake -DIN=index.html -DOUT=web_page.cpp -P embed.cmake
file(READ "${IN}" page)
set(delimiter "ce_web_page")
string(FIND "${page}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains )${delimiter}\" and cannot be embedded as a raw string literal")
endif()
file(WRITE "${OUT}"
     "// Generated from ${IN} by embed.cmake: do not edit.\n"
     "#include \"actors/http/web.hpp\"\n\n"
     "namespace ce {\n\n"
     "std::string_view web_page_html() {\n"
     "  static constexpr char page[] = R\"${delimiter}(${page})${delimiter}\";\n"
     "  return {page, sizeof page - 1};\n"
     "}\n\n"
     "}  // namespace ce\n")
