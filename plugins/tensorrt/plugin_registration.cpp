// Entry points of libtrtkv_plugins.so for TensorRT's dynamic plugin loading
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, IBuilderConfig plugins-to-serialize):
// setLoggerFinder() and getCreators(). Creators register under ops::kPluginNamespace, version 1.
#include <mutex>

#include "kv_append_plugin.h"
#include "paged_attention_plugin.h"
#include "plugin_common.h"

namespace trtkv {
namespace plugin {

namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

} // namespace

void log_error(std::string const& message) noexcept {
    try {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr) {
            logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
        }
    } catch (...) {
    }
}

} // namespace plugin
} // namespace trtkv

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(trtkv::plugin::gLoggerMutex);
    trtkv::plugin::gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
    static trtkv::plugin::KVAppendPluginCreator kvAppendCreator;
    static trtkv::plugin::PagedAttentionPluginCreator pagedAttentionCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&kvAppendCreator, &pagedAttentionCreator};
    nbCreators = 2;
    return creators;
}
