package io.klineflow.flink;

import java.lang.reflect.Field;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.dag.Transformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.operators.SimpleOperatorFactory;
import org.apache.flink.streaming.api.operators.StreamOperatorFactory;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;
import org.apache.flink.streaming.api.transformations.OneInputTransformation;

/**
 * PyFlink's keyed process operator (process mode), with its checkpoints holding every timer
 * the Python function registered before the barrier.
 *
 * <p>The Python worker sends timer registrations on their own channel; PyFlink queues each as
 * an action for the task's mailbox. {@code prepareSnapshotPreBarrier} finishes the bundle but,
 * unlike {@code processWatermark}, does not run the queued registrations, so the snapshot that
 * follows can hold the keyed state a bundle wrote without the timers that bundle registered
 * (PyFlink 2.2.1). After a restore from it those timers are gone: a key that is not touched
 * again is never flushed, a window never fires. This operator registers them before the
 * snapshot ({@code drainUnregisteredTimers}, what PyFlink does before a watermark); the queued
 * actions then find them registered and do nothing.
 */
public class TimerSafeKeyedProcessOperator<OUT> extends ExternalPythonKeyedProcessOperator<OUT> {

    private static final long serialVersionUID = 1L;

    public TimerSafeKeyedProcessOperator(
            Configuration config,
            DataStreamPythonFunctionInfo pythonFunctionInfo,
            RowTypeInfo inputTypeInfo,
            TypeInformation<OUT> outputTypeInfo) {
        super(config, pythonFunctionInfo, inputTypeInfo, outputTypeInfo);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        drainUnregisteredTimers();
    }

    /** What PyFlink's operator chaining builds from this operator stays timer-safe. */
    @Override
    public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
            DataStreamPythonFunctionInfo pythonFunctionInfo, TypeInformation<T> outputTypeInfo) {
        return new TimerSafeKeyedProcessOperator<>(
                config, pythonFunctionInfo, (RowTypeInfo) getInputTypeInfo(), outputTypeInfo);
    }

    /**
     * Replace the {@link ExternalPythonKeyedProcessOperator} of {@code transformation} (what
     * PyFlink's {@code KeyedStream.process} built) with a timer-safe one of the same function
     * and types; returns the new operator.
     */
    @SuppressWarnings({"unchecked", "rawtypes"})
    public static TimerSafeKeyedProcessOperator<?> install(Transformation<?> transformation)
            throws ReflectiveOperationException {
        if (!(transformation instanceof OneInputTransformation)) {
            throw new IllegalArgumentException(
                    "not a one-input transformation: " + transformation.getName());
        }
        OneInputTransformation<?, ?> oneInput = (OneInputTransformation<?, ?>) transformation;
        StreamOperatorFactory<?> factory = oneInput.getOperatorFactory();
        Object operator =
                factory instanceof SimpleOperatorFactory
                        ? ((SimpleOperatorFactory<?>) factory).getOperator()
                        : null;
        if (!(operator instanceof ExternalPythonKeyedProcessOperator)) {
            throw new IllegalArgumentException(
                    transformation.getName() + " does not run PyFlink's keyed process operator");
        }
        if (operator instanceof TimerSafeKeyedProcessOperator) {
            return (TimerSafeKeyedProcessOperator<?>) operator;
        }
        ExternalPythonKeyedProcessOperator<?> original = (ExternalPythonKeyedProcessOperator<?>) operator;
        TimerSafeKeyedProcessOperator<?> replacement =
                new TimerSafeKeyedProcessOperator(
                        original.getConfiguration(),
                        original.getPythonFunctionInfo(),
                        (RowTypeInfo) original.getInputTypeInfo(),
                        original.getProducedType());
        Field field = OneInputTransformation.class.getDeclaredField("operatorFactory");
        field.setAccessible(true);
        field.set(oneInput, SimpleOperatorFactory.of(replacement));
        return replacement;
    }
}
