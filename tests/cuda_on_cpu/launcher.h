// The emulator's command line: runs a script of buffer loads, kernel launches and saves.
//
//   load NAME PATH                      a buffer with a file's bytes
//   alloc NAME BYTES                    a fresh buffer, 0xff bytes (NaN as floats)
//   launch KERNEL GX GY GZ BX BY BZ ARG...
//                                       ARG: @NAME (the buffer's address) or TYPE=VALUE with
//                                       TYPE one of i32 u32 i64 f32 f64; the kinds must be
//                                       the kernel's parameter types, in order
//   save NAME PATH
//
// The generated file that includes this defines the table `kernels` and `kernel_count`.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>

namespace cuda_on_cpu {

// A kernel parameter's kind as scripts name it.
template <typename T>
constexpr const char* kind_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U>) return "p";
  else if constexpr (std::is_same_v<U, int>) return "i32";
  else if constexpr (std::is_same_v<U, unsigned int>) return "u32";
  else if constexpr (std::is_same_v<U, long long>) return "i64";
  else if constexpr (std::is_same_v<U, float>) return "f32";
  else if constexpr (std::is_same_v<U, double>) return "f64";
  else static_assert(sizeof(U) == 0, "a kernel parameter type the launcher cannot pass");
}

// The kinds of a parameter list, space-separated.
template <typename... Ts>
std::string signature() {
  std::string s;
  ((s += (s.empty() ? "" : " "), s += kind_of<Ts>()), ...);
  return s;
}

}  // namespace cuda_on_cpu

struct Entry {
  const char* name;
  // Parameter kinds, space-separated: p (pointer), i32, u32, i64, f32, f64.
  std::string (*signature)();
  void (*call)(void**);
};

extern const Entry kernels[];
extern const size_t kernel_count;

namespace cuda_on_cpu {

[[noreturn]] inline void script_error(int line, const std::string& what) {
  std::fprintf(stderr, "script line %d: %s\n", line, what.c_str());
  std::exit(2);
}

union Scalar {
  int i32;
  unsigned int u32;
  long long i64;
  float f32;
  double f64;
  void* p;
};

inline int run_script(const char* path, const Entry* table, size_t count) {
  std::ifstream in(path);
  if (!in) script_error(0, std::string("cannot read ") + path);
  std::map<std::string, std::vector<unsigned char>> buffers;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    std::istringstream words(text);
    std::string cmd;
    if (!(words >> cmd)) continue;
    if (cmd == "load" || cmd == "save") {
      std::string name, file;
      words >> name >> file;
      if (cmd == "load") {
        std::ifstream f(file, std::ios::binary);
        if (!f) script_error(line, "cannot read " + file);
        buffers[name].assign(std::istreambuf_iterator<char>(f), {});
      } else {
        auto it = buffers.find(name);
        if (it == buffers.end()) script_error(line, "no buffer " + name);
        std::ofstream f(file, std::ios::binary);
        f.write((const char*)it->second.data(), (std::streamsize)it->second.size());
        if (!f) script_error(line, "cannot write " + file);
      }
    } else if (cmd == "alloc") {
      std::string name;
      size_t bytes = 0;
      words >> name >> bytes;
      buffers[name].assign(bytes, 0xff);
    } else if (cmd == "launch") {
      std::string kernel;
      dim3 grid, block;
      words >> kernel >> grid.x >> grid.y >> grid.z >> block.x >> block.y >> block.z;
      const Entry* e = nullptr;
      for (size_t i = 0; i < count; ++i)
        if (kernel == table[i].name) e = &table[i];
      if (!e) script_error(line, "no kernel " + kernel);
      std::vector<Scalar> values;
      std::string kinds, arg;
      while (words >> arg) {
        Scalar v{};
        std::string kind;
        if (arg[0] == '@') {
          auto it = buffers.find(arg.substr(1));
          if (it == buffers.end()) script_error(line, "no buffer " + arg.substr(1));
          v.p = it->second.data();
          kind = "p";
        } else {
          auto eq = arg.find('=');
          if (eq == std::string::npos) script_error(line, "argument " + arg + " has no type");
          kind = arg.substr(0, eq);
          const char* s = arg.c_str() + eq + 1;
          if (kind == "i32") v.i32 = (int)std::strtol(s, nullptr, 10);
          else if (kind == "u32") v.u32 = (unsigned int)std::strtoul(s, nullptr, 10);
          else if (kind == "i64") v.i64 = std::strtoll(s, nullptr, 10);
          else if (kind == "f32") v.f32 = std::strtof(s, nullptr);
          else if (kind == "f64") v.f64 = std::strtod(s, nullptr);
          else script_error(line, "unknown argument type " + kind);
        }
        kinds += (kinds.empty() ? "" : " ") + kind;
        values.push_back(v);
      }
      if (kinds != e->signature())
        script_error(line, kernel + " takes (" + e->signature() + "), the script gives (" + kinds + ")");
      std::vector<void*> args;
      for (auto& v : values) args.push_back(&v);
      launch(e->call, grid, block, args.data());
    } else {
      script_error(line, "unknown command " + cmd);
    }
  }
  return 0;
}

}  // namespace cuda_on_cpu

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SCRIPT\n", argv[0]);
    return 2;
  }
  return cuda_on_cpu::run_script(argv[1], kernels, kernel_count);
}
