#include "formats/chat_template.hpp"

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace sluice {

namespace {
constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";

// R1 history keeps only what follows the reasoning.
std::string strip_reasoning(const std::string& content) {
    const auto end = content.rfind("</think>");
    return end == std::string::npos ? content : content.substr(end + 8);
}
}  // namespace

ChatTemplateKind chat_template_from_text(std::string_view t) {
    // R1 (Jan 2025) opens the generation prompt with <think>; V3-0324/R1-0528 emit the assistant
    // tag with the user turn.
    if (t.find("<｜Assistant｜><think>\\n") != std::string_view::npos ||
        t.find("<｜Assistant｜><think>\n") != std::string_view::npos)
        return ChatTemplateKind::deepseek_r1;
    if (t.find("'<｜User｜>' + message['content'] + '<｜Assistant｜>'") != std::string_view::npos)
        return ChatTemplateKind::deepseek_v3_0324;
    return ChatTemplateKind::deepseek_v3;
}

ChatTemplateKind chat_template_from_config_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail(ErrorKind::io, "{}: cannot open", path);
    try {
        const auto j = nlohmann::json::parse(in);
        if (j.contains("chat_template") && j["chat_template"].is_string())
            return chat_template_from_text(j["chat_template"].get<std::string>());
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorKind::invalid_input, "{}: not valid JSON: {}", path, e.what());
    }
    return ChatTemplateKind::deepseek_v3;
}

const char* chat_template_name(ChatTemplateKind kind) {
    switch (kind) {
        case ChatTemplateKind::deepseek_v3: return "deepseek-v3";
        case ChatTemplateKind::deepseek_v3_0324: return "deepseek-v3-0324";
        case ChatTemplateKind::deepseek_r1: return "deepseek-r1";
    }
    return "?";
}

std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind, bool add_generation_prompt) {
    std::string out(kBos);
    // System prompts first, joined by a blank line.
    bool first_system = true;
    for (const auto& m : messages) {
        if (m.role != "system") continue;
        if (!first_system) out += "\n\n";
        out += m.content;
        first_system = false;
    }
    const bool assistant_with_user = kind == ChatTemplateKind::deepseek_v3_0324;
    for (const auto& m : messages) {
        if (m.role == "system") continue;
        if (m.role == "user") {
            out += kUser;
            out += m.content;
            if (assistant_with_user) out += kAssistant;
        } else if (m.role == "assistant") {
            if (!assistant_with_user) out += kAssistant;
            out += kind == ChatTemplateKind::deepseek_v3 ? m.content : strip_reasoning(m.content);
            out += kEos;
        } else {
            fail(ErrorKind::invalid_input, "chat message role '{}' (expected system, user or assistant)", m.role);
        }
    }
    if (add_generation_prompt) {
        if (kind == ChatTemplateKind::deepseek_r1) out += "<｜Assistant｜><think>\n";
        else if (!assistant_with_user || messages.empty() || messages.back().role != "user") out += kAssistant;
    }
    return out;
}

}  // namespace sluice
